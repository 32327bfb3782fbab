//! Connection storage for a worker loop: the `slab` crate's slots, reused
//! through its free list, each with a generation of ours so a stale timer
//! or event for a reused slot is recognised and ignored.

pub struct Slab<T> {
    entries: slab::Slab<T>,
    /// Generation of each slot, by index; kept while the slot is vacant.
    gens: Vec<u32>,
    /// Generation of a slot made anew: above every generation a slot
    /// dropped by `shrink` had, so stale keys for it never match.
    fresh: u32,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            entries: slab::Slab::new(),
            gens: Vec::new(),
            fresh: 0,
        }
    }
}

impl<T> Slab<T> {
    /// What one slot takes (the crate's entry, shaped as `Result<T,
    /// usize>`, and its generation): the memory each open connection
    /// costs a worker while it idles.
    pub const SLOT_BYTES: usize =
        std::mem::size_of::<Result<T, usize>>() + std::mem::size_of::<u32>();

    pub fn new() -> Slab<T> {
        Slab::default()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Insert, returning (slot, generation).
    pub fn insert(&mut self, v: T) -> (usize, u32) {
        let room = self.entries.capacity();
        let i = self.entries.insert(v);
        if self.entries.capacity() != room {
            grown();
        }
        match self.gens.get_mut(i) {
            Some(g) => *g = g.wrapping_add(1),
            None => self.gens.push(self.fresh),
        }
        (i, self.gens[i])
    }

    pub fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        self.entries.get_mut(i)
    }

    /// The entry in slot `i` if it is still generation `gen`.
    pub fn get_gen(&mut self, i: usize, gen: u32) -> Option<&mut T> {
        if self.generation(i) != gen {
            return None;
        }
        self.entries.get_mut(i)
    }

    pub fn generation(&self, i: usize) -> u32 {
        self.gens.get(i).copied().unwrap_or(0)
    }

    pub fn remove(&mut self, i: usize) -> Option<T> {
        self.entries.try_remove(i)
    }

    /// Whether slot `i` holds an entry of generation `gen`.
    pub fn is_live(&self, i: usize, gen: u32) -> bool {
        self.gens.get(i) == Some(&gen) && self.entries.contains(i)
    }

    /// Give back the memory of the free slots at the end (after a burst of
    /// connections). Slots in use keep their index.
    pub fn shrink(&mut self) {
        self.entries.shrink_to_fit();
        // The crate dropped the vacant slots past the last one in use.
        let n = self.entries.iter().next_back().map_or(0, |(i, _)| i + 1);
        for g in self.gens.drain(n..) {
            self.fresh = self.fresh.max(g.wrapping_add(1));
        }
        self.gens.shrink_to_fit();
    }

    /// Every slot index in use is below this (vacant ones may be too).
    pub fn slots(&self) -> usize {
        self.gens.len()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (usize, &mut T)> {
        self.entries.iter_mut()
    }
}

/// The slab has just taken a block twice as large. glibc's `realloc` moves
/// a block it cannot extend where it is, and the old one, freed, stays
/// resident in the heap: the idle trim (`proto::mem`) waits for a quiet
/// worker, and the connections that made the slab grow are still open.
/// With tcp's 272-byte entries the 512-slot block is past glibc's 128 KiB
/// `mmap` threshold and goes to a mapping of its own, leaving the 256-slot
/// one (68 KiB) behind: ~70 bytes more per idle connection at 1,000 of
/// them (README "Measured"). A trim costs ~5 µs, and a slab grows only at
/// a new peak, by doubling: a few times per burst, never per connection.
#[cold]
#[inline(never)]
fn grown() {
    proto::mem::give_back_heap();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuse_bumps_generation() {
        let mut s = Slab::new();
        let (a, g) = s.insert(1);
        assert_eq!(s.remove(a), Some(1));
        let (b, g2) = s.insert(2);
        assert_eq!(a, b);
        assert_ne!(g, g2);
        assert!(s.get_gen(a, g).is_none());
        assert_eq!(s.get_gen(b, g2), Some(&mut 2));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn shrink_drops_free_tail_and_never_reissues_a_generation() {
        let mut s = Slab::new();
        let keys: Vec<_> = (0..4).map(|i| s.insert(i)).collect();
        s.remove(keys[1].0);
        s.remove(keys[3].0);
        s.remove(keys[2].0);
        s.shrink();
        assert_eq!(s.slots(), 1, "slots 1..3 were free at the end");
        assert_eq!(s.len(), 1);
        assert_eq!(s.get_gen(keys[0].0, keys[0].1), Some(&mut 0));
        let again: Vec<_> = (0..3).map(|i| s.insert(10 + i)).collect();
        for (i, g) in &again {
            assert!(*i >= 1);
            let old = keys.iter().find(|k| k.0 == *i).unwrap();
            assert_ne!(old.1, *g, "a stale key for slot {i} must not match");
            assert!(!s.is_live(old.0, old.1));
            assert!(s.is_live(*i, *g));
        }
    }
}
