//! Connection storage for a worker loop: slots reused through a free list,
//! each with a generation so a stale timer or event for a reused slot is
//! recognised and ignored.

pub struct Slab<T> {
    slots: Vec<(u32, Option<T>)>,
    free: Vec<usize>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slab<T> {
    pub fn new() -> Slab<T> {
        Slab::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Insert, returning (slot, generation).
    pub fn insert(&mut self, v: T) -> (usize, u32) {
        self.len += 1;
        match self.free.pop() {
            Some(i) => {
                let s = &mut self.slots[i];
                s.0 = s.0.wrapping_add(1);
                s.1 = Some(v);
                (i, s.0)
            }
            None => {
                self.slots.push((0, Some(v)));
                (self.slots.len() - 1, 0)
            }
        }
    }

    pub fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        self.slots.get_mut(i).and_then(|s| s.1.as_mut())
    }

    /// The entry in slot `i` if it is still generation `gen`.
    pub fn get_gen(&mut self, i: usize, gen: u32) -> Option<&mut T> {
        self.slots
            .get_mut(i)
            .filter(|s| s.0 == gen)
            .and_then(|s| s.1.as_mut())
    }

    pub fn generation(&self, i: usize) -> u32 {
        self.slots.get(i).map_or(0, |s| s.0)
    }

    pub fn remove(&mut self, i: usize) -> Option<T> {
        let v = self.slots.get_mut(i)?.1.take()?;
        self.len -= 1;
        self.free.push(i);
        Some(v)
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (usize, &mut T)> {
        self.slots
            .iter_mut()
            .enumerate()
            .filter_map(|(i, s)| s.1.as_mut().map(|v| (i, v)))
    }
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
}
