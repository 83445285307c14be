//! A `BPF_F_MMAPABLE` array map's values, mapped into the agent piece by piece for
//! the length of a sync: the fast tables are written as memory stores (no syscall per
//! code). The kernel maps every page of a window when it is mapped, so a sync maps
//! only the windows it touches (a 10-change diff a few, a rebuild all), and between
//! syncs nothing is mapped: the agent's resident memory does not carry the tables.

use std::{
    cell::OnceCell,
    io,
    os::fd::{AsFd as _, AsRawFd as _, RawFd},
    sync::atomic::{AtomicU8, AtomicU16, AtomicU32, AtomicU64},
};

use aya::maps::MapData;

use super::DatapathError;

/// Bytes mapped at a time at least. A window is a whole number of pages (the kernel
/// maps from page boundaries) and of array elements, so that no element straddles two
/// windows: exactly `WINDOW` for elements whose size divides the page size.
pub(super) const WINDOW: usize = 128 << 10;

/// The window size for elements of `element` bytes: the smallest multiple of both the
/// page size and `element` that is at least [`WINDOW`] (a power of two), so `WINDOW`
/// itself when `element` divides the page size.
fn window_for(element: usize) -> usize {
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
        .ok()
        .filter(|p| p.is_power_of_two())
        .unwrap_or(4096);
    let unit = lcm(page, element);
    unit * WINDOW.div_ceil(unit)
}

fn lcm(a: usize, b: usize) -> usize {
    let (mut x, mut y) = (a, b);
    while y != 0 {
        (x, y) = (y, x % y);
    }
    a / x * b
}

/// The values of one array map (or, in tests, memory of the same layout), shared with
/// the program reading them concurrently: accessed atomically only.
pub(super) struct Region<'a> {
    backing: Backing<'a>,
    len: usize,
    /// Bytes per window (see [`window_for`]).
    window: usize,
    windows: Vec<OnceCell<Window>>,
}

enum Backing<'a> {
    Map {
        fd: RawFd,
        name: &'static str,
        _map: &'a MapData,
    },
    #[cfg(test)]
    Memory(&'a [AtomicU64]),
}

struct Window {
    ptr: *mut u8,
    len: usize,
    /// Whether `ptr` is a mapping of ours to unmap.
    mapped: bool,
}

impl<'a> Region<'a> {
    /// The first `len` bytes of the values of `map` (called `name`), mapped when used;
    /// for elements whose size divides the page size.
    pub(super) fn of_map(map: &'a MapData, len: usize, name: &'static str) -> Self {
        Self::of_elements(map, len, 1, name)
    }

    /// As [`Region::of_map`], for elements of `element` bytes.
    pub(super) fn of_elements(
        map: &'a MapData,
        len: usize,
        element: usize,
        name: &'static str,
    ) -> Self {
        Self::new(
            Backing::Map {
                fd: map.fd().as_fd().as_raw_fd(),
                name,
                _map: map,
            },
            len,
            element,
        )
    }

    /// Memory standing in for a map in tests.
    #[cfg(test)]
    pub(super) fn of_memory(memory: &'a [AtomicU64]) -> Self {
        Self::of_memory_elements(memory, 1)
    }

    /// Memory standing in for a map of `element`-byte elements in tests.
    #[cfg(test)]
    pub(super) fn of_memory_elements(memory: &'a [AtomicU64], element: usize) -> Self {
        Self::new(Backing::Memory(memory), memory.len() * 8, element)
    }

    fn new(backing: Backing<'a>, len: usize, element: usize) -> Self {
        let window = window_for(element);
        Self {
            backing,
            len,
            window,
            windows: (0..len.div_ceil(window)).map(|_| OnceCell::new()).collect(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// `n` bytes at `offset`, within one window.
    fn bytes(&self, offset: usize, n: usize) -> Result<*mut u8, DatapathError> {
        let index = offset / self.window;
        assert!(
            offset + n <= self.len && (offset + n - 1) / self.window == index,
            "{n} bytes at {offset}: beyond the region or across windows"
        );
        let window = match self.windows[index].get() {
            Some(w) => w,
            None => {
                let w = self.map(index)?;
                self.windows[index].get_or_init(|| w)
            }
        };
        // SAFETY: within the window (checked above).
        Ok(unsafe { window.ptr.add(offset - index * self.window) })
    }

    fn map(&self, index: usize) -> Result<Window, DatapathError> {
        let offset = index * self.window;
        let len = self.window.min(self.len - offset);
        match &self.backing {
            Backing::Map { fd, name, .. } => {
                // SAFETY: a shared mapping of part of a BPF_F_MMAPABLE array's values;
                // the kernel refuses a range beyond them and a map without the flag.
                let ptr = unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        len,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_SHARED,
                        *fd,
                        offset as libc::off_t,
                    )
                };
                if ptr == libc::MAP_FAILED {
                    return Err(DatapathError::MapFastTable {
                        name,
                        source: io::Error::last_os_error(),
                    });
                }
                Ok(Window {
                    ptr: ptr.cast(),
                    len,
                    mapped: true,
                })
            }
            #[cfg(test)]
            Backing::Memory(memory) => Ok(Window {
                // SAFETY: `offset` is within the memory.
                ptr: unsafe { memory.as_ptr().cast::<u8>().cast_mut().add(offset) },
                len,
                mapped: false,
            }),
        }
    }

    /// `n` two-byte cells from cell `index`, within one window.
    pub(super) fn u16s(&self, index: usize, n: usize) -> Result<&[AtomicU16], DatapathError> {
        let ptr = self.bytes(index * 2, n * 2)?;
        // SAFETY: `n` cells inside a live window (mapped until `self` drops), 2-aligned
        // (windows are page-aligned); only accessed atomically.
        Ok(unsafe { std::slice::from_raw_parts(ptr.cast::<AtomicU16>(), n) })
    }

    pub(super) fn u16(&self, index: usize) -> Result<&AtomicU16, DatapathError> {
        Ok(&self.u16s(index, 1)?[0])
    }

    /// The eight-byte cell `index` (at byte `8 * index`).
    pub(super) fn u64(&self, index: usize) -> Result<&AtomicU64, DatapathError> {
        let ptr = self.bytes(index * 8, 8)?;
        // SAFETY: as in `u16s`, 8-aligned.
        Ok(unsafe { &*ptr.cast::<AtomicU64>() })
    }

    /// The four-byte cell `index` (at byte `4 * index`).
    pub(super) fn u32(&self, index: usize) -> Result<&AtomicU32, DatapathError> {
        let ptr = self.bytes(index * 4, 4)?;
        // SAFETY: as in `u16s`, 4-aligned.
        Ok(unsafe { &*ptr.cast::<AtomicU32>() })
    }

    /// `n` bytes from byte `index`, within one window.
    pub(super) fn u8s(&self, index: usize, n: usize) -> Result<&[AtomicU8], DatapathError> {
        let ptr = self.bytes(index, n)?;
        // SAFETY: as in `u16s`.
        Ok(unsafe { std::slice::from_raw_parts(ptr.cast::<AtomicU8>(), n) })
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        if self.mapped {
            // SAFETY: the mapping made in `Region::map`, unmapped once.
            unsafe { libc::munmap(self.ptr.cast(), self.len) };
        }
    }
}
