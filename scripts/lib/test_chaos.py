#!/usr/bin/env python3
"""The pure parts of scripts/lib/chaos.py: flag draws (in their documented
ranges, the same for the same seed, PVX_CHAOS_SKIP honoured), schedules,
the deadline bounds, the held-fair plan and share, PROXY header parsing (stdlib unittest; run by
tests/ops.rs::chaos_draws_and_bounds).

    python3 -B -m unittest scripts/lib/test_chaos.py
"""

import os
import random
import socket
import struct
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import chaos  # noqa: E402

# (min, max) of each drawn flag as README "Flags and defaults" documents it
# (durations in ms; 0 allowed where the flag takes 0).
RANGES = {
    "connect-timeout": (10, 86_400_000),
    "hold-timeout": (0, 86_400_000),
    "max-held": (0, 1_000_000),
    "pipe-size": (4096, 1 << 20),
    "health-interval": (0, 86_400_000),
    "health-timeout": (10, 86_400_000),
    "health-fall": (1, 1000),
    "health-rise": (1, 1000),
    "head-timeout": (10, 86_400_000),
    "idle-timeout": (10, 86_400_000),
    "response-timeout": (10, 86_400_000),
    "tcp-idle-timeout": (0, 86_400_000),
    "drain-timeout": (0, 86_400_000),
    "max-conns": (1, 1_000_000),
    "retry-delay": (10, 86_400_000),
    "backoff-factor": (1, 100),
}
NOT_BELOW = {"hold-timeout": 10, "health-interval": 100, "tcp-idle-timeout": 10}  # 0, or at least this


class Draws(unittest.TestCase):
    def draws(self, skip=(), n=400):
        return [chaos.draw_flags(random.Random(f"{s}:1"), skip) for s in range(n)]

    def test_every_value_is_in_its_documented_range(self):
        for f, mode in self.draws():
            self.assertEqual(set(f), set(RANGES))
            for k, v in f.items():
                lo, hi = RANGES[k]
                self.assertTrue(lo <= v <= hi, f"{k} {v}")
                if k in NOT_BELOW and v:
                    self.assertGreaterEqual(v, NOT_BELOW[k], k)
            rel = {"short": f["hold-timeout"] < f["connect-timeout"], "long": f["hold-timeout"] > f["connect-timeout"],
                   "zero": f["hold-timeout"] == 0}
            self.assertTrue(rel[mode], (mode, f))

    def test_the_combinations_the_issue_names_are_drawn(self):
        seen = set()
        for f, mode in self.draws():
            seen.add(mode)
            seen.add("health on" if f["health-interval"] else "health off")
            seen.add({4096: "tiny pipes", 1 << 20: "huge pipes"}.get(f["pipe-size"], "pipes"))
            if f["max-held"] == 1:
                seen.add("max-held 1")
            if mode == "short" and f["health-interval"]:
                seen.add("hold < connect with checks")
        for want in ("short", "long", "zero", "health on", "health off", "tiny pipes", "huge pipes",
                     "max-held 1", "hold < connect with checks"):
            self.assertIn(want, seen)

    def test_a_seed_draws_the_same_again(self):
        a = [chaos.draw_flags(random.Random(f"42:{r}")) for r in range(1, 6)]
        b = [chaos.draw_flags(random.Random(f"42:{r}")) for r in range(1, 6)]
        self.assertEqual(a, b)
        self.assertEqual(chaos.schedule(random.Random(3), "http", 80), chaos.schedule(random.Random(3), "http", 80))

    def test_skips_leave_things_out(self):
        for f, mode in self.draws(skip={"hold-short", "max-held-1", "health"}):
            self.assertNotEqual(mode, "short")
            self.assertNotEqual(f["max-held"], 1)
            self.assertEqual(f["health-interval"], 0)
        for seed in range(50):
            plan = chaos.schedule(random.Random(seed), "http", 80, {"1xx", "blackhole"})
            self.assertFalse({st for _, st in plan} & {"1xx", "blackhole"})
            self.assertEqual(plan[0], (0.0, "up"))
            self.assertEqual(plan[-1], (80, "up"))
        self.assertNotIn("1xx", {st for s in range(50) for _, st in chaos.schedule(random.Random(s), "tcp", 80)})

    def test_flag_args_are_what_run_takes(self):
        f, _ = chaos.draw_flags(random.Random(1))
        f["hold-timeout"], f["pipe-size"] = 0, 4096
        args = chaos.flag_args(f)
        self.assertEqual(args[:2], ["--reset-window", "0s"])
        self.assertEqual(args[args.index("--hold-timeout") + 1], "0")
        self.assertEqual(args[args.index("--pipe-size") + 1], "4096")
        self.assertEqual(args[args.index("--connect-timeout") + 1], f"{f['connect-timeout']}ms")


class HeldFair(unittest.TestCase):
    F = {"max-held": 4, "hold-timeout": 6000, "health-interval": 0, "health-rise": 2}

    def plan(self, seed, **kw):
        return chaos.held_fair_plan(random.Random(seed), dict(self.F, **kw))

    def test_the_share_and_when_it_is_asserted(self):
        # max(1, max_held / routes holding); promised only when the shares
        # fit in --max-held (1 slot cannot hold for two routes).
        self.assertEqual([chaos.held_share(m) for m in (1, 2, 4, 1024)], [1, 1, 2, 512])
        self.assertEqual([chaos.held_fair_asserted(m) for m in (1, 2, 4)], [False, True, True])

    def test_outages_are_held_and_served_by_the_rule(self):
        for seed in range(200):
            f = dict(self.F, **{"max-held": random.Random(seed).choice(chaos.HF_HELD),
                                "hold-timeout": random.Random(seed).randint(1000, 20_000),
                                "health-interval": random.Random(seed).choice((0, 500)),
                                "health-rise": random.Random(seed).randint(1, 3)})
            plan, why = chaos.held_fair_plan(random.Random(seed), f)
            if plan is None:
                self.assertIn("--hold-timeout", why)
                continue
            self.assertTrue(4 <= len(plan) <= 6)
            share = chaos.held_share(f["max-held"])
            for up, d, kind, n in plan:
                # Long enough that a request is held (~375 ms of retries
                # first), ending early enough to be served within the hold.
                self.assertGreaterEqual(d, chaos.HF_MIN_OUTAGE_S)
                self.assertLessEqual(d + chaos.held_fair_margin(f), f["hold-timeout"] / 1000)
                self.assertTrue(1.0 <= up <= 2.5)
                if kind == "half-close":
                    self.assertGreaterEqual(d, chaos.HF_HALFCLOSE_S)
                    self.assertEqual(n, share)  # the route's share, half-closed
                else:
                    self.assertTrue(1 <= n <= share + 1)  # one beyond the share
        kinds = {k for s in range(50) for _, _, k, _ in self.plan(s)[0]}
        self.assertEqual(kinds, {"requests", "half-close"})

    def test_a_window_is_owed_its_free_share_in_any_order(self):
        # k requests into one outage: the route's free share of them is
        # owed, whichever ones (a later one may be held before an earlier
        # one still retrying, once the checks say down).
        self.assertEqual([chaos.held_fair_owed(k, 2) for k in (1, 2, 3)], [1, 2, 2])
        self.assertEqual(chaos.held_fair_owed(3, 2, before=1), 1)
        self.assertEqual(chaos.held_fair_owed(3, 2, before=2), 0)
        self.assertEqual(chaos.held_fair_owed(2, 1, before=3), 0)

    def test_a_seed_plans_the_same_again(self):
        self.assertEqual(self.plan(7), self.plan(7))

    def test_not_run_when_nothing_can_be_measured(self):
        self.assertIsNone(self.plan(1, **{"max-held": 1024})[0])
        self.assertIsNone(self.plan(1, **{"hold-timeout": 0})[0])
        self.assertIsNone(self.plan(1, **{"hold-timeout": 1000})[0])
        # Health checks: a down backend waits --health-rise checks 500 ms
        # apart, which the outage must leave room for.
        self.assertIsNotNone(self.plan(1, **{"hold-timeout": 1200})[0])
        self.assertIsNone(self.plan(1, **{"hold-timeout": 1200, "health-interval": 500, "health-rise": 3})[0])
        plan, why = chaos.held_fair_plan(random.Random(1), self.F, {"held-fair"})
        self.assertEqual((plan, why), (None, "skipped"))
        self.assertIn("held-fair", chaos.SKIPS)


class Bounds(unittest.TestCase):
    F = {"connect-timeout": 10_000, "hold-timeout": 1000, "response-timeout": 5000, "tcp-idle-timeout": 0,
         "head-timeout": 3000, "idle-timeout": 8000, "retry-delay": 20}

    def test_a_held_connection_ends_by_hold_plus_connect(self):
        # hold 1 s < connect 10 s (issue 18 item 1): one dial is 1 + 10 + 0.5.
        b = chaos.probe_bound("flaky-tcp", self.F, ["gone"])
        raw = 11.5 + 1.0 + 0.02
        self.assertAlmostEqual(b, raw + chaos.slack(raw))
        # Each state a connection lives through may cost a dial.
        self.assertGreater(chaos.probe_bound("flaky-tcp", self.F, ["gone", "up"]), b + 11)
        # No hold: ~375 ms of retries count as 0.4 s.
        f0 = dict(self.F, **{"hold-timeout": 0})
        self.assertAlmostEqual(chaos.probe_bound("flaky-tcp", f0, ["up"]) - chaos.probe_bound("flaky-tcp", self.F, ["up"]),
                               (0.4 - 1.0) * (1 + chaos.SLACK_FRAC))

    def test_a_stall_adds_its_timeout_or_has_no_bound(self):
        self.assertIsNone(chaos.probe_bound("flaky-tcp", self.F, ["stall"]))
        f = dict(self.F, **{"tcp-idle-timeout": 4000})
        self.assertGreater(chaos.probe_bound("flaky-tcp", f, ["stall"]), 11.5 + 4)
        self.assertGreater(chaos.probe_bound("flaky-http", self.F, ["stall"]), 11.5 + 5)
        self.assertGreater(chaos.probe_bound("flaky-http", self.F, ["1xx"]), 11.5 + chaos.FLOOD_S)

    def test_fixed_bounds_are_the_timeout_plus_slack(self):
        self.assertAlmostEqual(chaos.fixed_bound("slow-head", self.F), 3.02 + chaos.slack(3.02))
        self.assertAlmostEqual(chaos.fixed_bound("idle-keepalive", self.F), 8.02 + chaos.slack(8.02))


class Proxy(unittest.TestCase):
    def test_v1(self):
        self.assertEqual(chaos.proxy_source(b"PROXY TCP4 127.0.0.1 127.0.0.1 5 6\r\nab"), ("127.0.0.1", 36))
        self.assertEqual(chaos.proxy_source(b"PROXY UNKNOWN\r\nab"), ("unknown", 15))
        self.assertEqual(chaos.proxy_source(b"PROXY TCP4 127.0"), (None, None))

    def test_v2(self):
        addr = socket.inet_aton("127.0.0.1") * 2 + struct.pack("!HH", 5, 6)
        proxy = chaos.V2_SIG + bytes([0x21, 0x11]) + struct.pack("!H", 12) + addr
        self.assertEqual(chaos.proxy_source(proxy + b"ab"), ("127.0.0.1", 28))
        local = chaos.V2_SIG + bytes([0x20, 0x00]) + struct.pack("!H", 0)
        self.assertEqual(chaos.proxy_source(local + b"ab"), ("local", 16))
        self.assertEqual(chaos.proxy_source(proxy[:20]), (None, None))
        self.assertEqual(chaos.proxy_source(chaos.V2_SIG[:5]), (None, None))


if __name__ == "__main__":
    unittest.main()
