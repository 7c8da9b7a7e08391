//! Byte buffers that start on a boundary of the caller's choosing: a cache
//! line, so that a line-sized load or store is one access and not two, or a
//! page, so that the buffer's pages sit in the cache as a table file's do.

use std::ops::{Deref, DerefMut};

/// A cache line of the CPUs we build for.
pub(crate) const CACHE_LINE: usize = 64;

/// A zeroed byte buffer whose first byte lies on a multiple of `align`.
pub(crate) struct AlignedBytes {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBytes {
    /// `len` zero bytes starting on a multiple of `align`, a power of two.
    pub(crate) fn zeroed(len: usize, align: usize) -> AlignedBytes {
        debug_assert!(align.is_power_of_two());
        let storage = vec![0; len + align - 1];
        // `align_offset` may decline to compute an offset; the buffer is then
        // merely slower, never wrong.
        let start = match storage.as_ptr().align_offset(align) {
            offset if offset < align => offset,
            _ => 0,
        };
        AlignedBytes { storage, start, len }
    }
}

impl Deref for AlignedBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }
}

impl DerefMut for AlignedBytes {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

#[cfg(test)]
impl PartialEq for AlignedBytes {
    fn eq(&self, other: &AlignedBytes) -> bool {
        **self == **other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_start_on_their_boundary_and_are_zero() {
        for align in [CACHE_LINE, 4096] {
            for len in [0, 1, 63, 64, 4096 * 3 + 5] {
                let mut buffer = AlignedBytes::zeroed(len, align);
                assert_eq!(buffer.len(), len);
                assert_eq!(buffer.as_ptr() as usize % align, 0, "{len} bytes on {align}");
                assert!(buffer.iter().all(|&b| b == 0));
                buffer.fill(7);
                assert!(buffer.iter().all(|&b| b == 7));
            }
        }
    }
}
