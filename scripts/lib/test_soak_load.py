#!/usr/bin/env python3
"""How soak_load.py counts misbehaving clients' errors (stdlib unittest; run
by tests/ops.rs::soak_accounting_classifies_errors_after_the_kills).

    python3 -B -m unittest scripts/lib/test_soak_load.py
"""

import os
import sys
import tempfile
import types
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import soak_load as sl  # noqa: E402


class Accounting(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        a = types.SimpleNamespace(
            seed=1,
            tcp="127.0.0.1:9",
            http="127.0.0.1:9",
            unix=os.path.join(self.dir.name, "link.sock"),
            csv=os.path.join(self.dir.name, "samples.csv"),
        )
        self.s = sl.Soak(a)

    def tearDown(self):
        self.s.csv.close()
        self.dir.cleanup()

    def test_a_slowloris_that_reads_eof_when_its_worker_dies_is_the_kills(self):
        """The two "unexplained" slowloris of the 10-minute soak: waiting for
        the 408 (28-30 s), the client reads EOF the moment the worker is
        killed, before run_kills records the kill (it does once the new
        worker shows in status)."""
        s = self.s
        t_conn = sl.now()
        t_before = sl.now()  # os.kill(http worker)
        t_after = sl.now()
        s.bad_done("slowloris", "{why}", s.error(sl.Fail("eof after 0 buffered bytes"), "http", t_conn))
        s.kills.append(("http", t_before, t_after, sl.now(), 100, 101))
        outcomes, odd = s.classify_bad()
        self.assertEqual(odd, [])
        self.assertEqual(outcomes, {"slowloris: Fail (a worker was killed meanwhile)": 1})

    def test_an_error_no_kill_explains_stays_unexplained(self):
        s = self.s
        s.kills.append(("tcp", sl.now(), sl.now(), sl.now(), 100, 101))
        t_conn = sl.now()  # after that kill, and it was another endpoint's
        s.bad_done("slowloris", "{why}", s.error(sl.Fail("eof after 0 buffered bytes"), "http", t_conn))
        s.bad_done("slowloris", "408")
        outcomes, odd = s.classify_bad()
        self.assertEqual(outcomes, {"slowloris: Fail": 1, "slowloris: 408": 1})
        self.assertEqual([(o[2], o[3]) for o in odd], [("slowloris", "Fail: eof after 0 buffered bytes")])

    def test_a_flood_outcome_names_its_error(self):
        s = self.s
        t0 = sl.now()
        s.bad_done("flood", "http {why} after 17", s.error(ConnectionResetError("reset"), "http", t0))
        s.kills.append(("http", t0, sl.now(), sl.now(), 100, 101))
        s.bad_done("flood", "unix 300 connections")
        outcomes, odd = s.classify_bad()
        self.assertEqual(odd, [])
        self.assertEqual(
            outcomes,
            {
                "flood: http ConnectionResetError (a worker was killed meanwhile) after 17": 1,
                "flood: unix 300 connections": 1,
            },
        )


if __name__ == "__main__":
    unittest.main()
