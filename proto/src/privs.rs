//! The one capability drop, for the supervisor and every worker.

use caps::{CapSet, Capability, CapsHashSet};

/// Keep only `keep` (as far as we hold it): shrink the bounding set to it,
/// so nothing exec'd later can get more back; clear the inheritable and
/// ambient sets; set permitted and effective to `keep` ∩ permitted; set
/// no_new_privs. Returns what is kept.
///
/// The bounding set goes first: it can only shrink while CAP_SETPCAP is
/// effective. Not holding CAP_SETPCAP (started unprivileged) is not an
/// error; there is then nothing in the bounding set to protect.
pub fn keep_only(keep: &[Capability]) -> Result<CapsHashSet, String> {
    let keep: CapsHashSet = keep.iter().copied().collect();
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        for c in caps::all() {
            // caps::all() names every capability the crate knows, newer
            // kernels' included (CAP_PERFMON and CAP_BPF are Linux 5.8,
            // CAP_CHECKPOINT_RESTORE 5.9). An older kernel answers EINVAL
            // to PR_CAPBSET_READ and PR_CAPBSET_DROP of one it does not
            // have: nothing to drop then, and one already out of the set
            // needs no second drop.
            if keep.contains(&c) || !caps::has_cap(None, CapSet::Bounding, c).unwrap_or(false) {
                continue;
            }
            caps::drop(None, CapSet::Bounding, c)
                .map_err(|e| format!("dropping {c} from the bounding set: {e}"))?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(|e| format!("clearing ambient caps: {e}"))?;
    caps::clear(None, CapSet::Inheritable)
        .map_err(|e| format!("clearing inheritable caps: {e}"))?;
    let perm = caps::read(None, CapSet::Permitted).map_err(|e| format!("capget: {e}"))?;
    let kept: CapsHashSet = perm.intersection(&keep).copied().collect();
    caps::set(None, CapSet::Effective, &kept).map_err(|e| format!("capset(effective): {e}"))?;
    caps::set(None, CapSet::Permitted, &kept).map_err(|e| format!("capset(permitted): {e}"))?;
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("prctl(PR_SET_NO_NEW_PRIVS): {e}"))?;
    Ok(kept)
}
