//! Error source chains: the errno an error carries, and an error shown with
//! its sources on one line.
//!
//! The agent's error types keep what caused them as their typed source
//! (`#[source]`, `#[from]`) and do not repeat it in their own message. So
//! errors are classified by walking the chain ([`errno_of`]), never by
//! searching their text, and whoever shows an error to people shows the
//! whole chain: [`Chain`] in log lines, API answers and the binaries'
//! last words.

use std::{error::Error, fmt};

/// The errno of the first OS error in `e`'s source chain (`e` included).
pub fn errno_of(e: &(dyn Error + 'static)) -> Option<i32> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(errno) = io.raw_os_error() {
                return Some(errno);
            }
        }
        if let Some(errno) = err.downcast_ref::<nix::Error>() {
            return Some(*errno as i32);
        }
        cur = err.source();
    }
    None
}

/// Whether the kernel refused for lack of privileges (`EPERM`, `EACCES`)
/// somewhere in `e`'s chain.
pub fn is_permission_denied(e: &(dyn Error + 'static)) -> bool {
    matches!(errno_of(e), Some(libc::EPERM | libc::EACCES))
}

/// An error and its sources, `outer: inner: innermost`. A source whose text
/// the message before it already ends with (some libraries' errors print
/// their source themselves) is shown once.
#[derive(Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.to_string();
        let mut cur = self.0.source();
        while let Some(err) = cur {
            let text = err.to_string();
            if !shown.ends_with(&text) {
                shown.push_str(": ");
                shown.push_str(&text);
            }
            cur = err.source();
        }
        f.write_str(&shown)
    }
}

impl fmt::Debug for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("reading {0}")]
        Read(&'static str, #[source] std::io::Error),
        #[error("mounting")]
        Mount(#[source] nix::Error),
        #[error("wrapped")]
        Wrapped(#[source] Inner),
        #[error("no cause")]
        Leaf,
    }

    /// A library error that prints its source itself.
    #[derive(Debug, thiserror::Error)]
    #[error("syscall failed: {0}")]
    struct Inner(#[source] std::io::Error);

    #[test]
    fn errno_is_found_through_the_chain() {
        let denied = std::io::Error::from_raw_os_error(libc::EPERM);
        assert_eq!(errno_of(&denied), Some(libc::EPERM));
        let read = Outer::Read("x", std::io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(errno_of(&read), Some(libc::ENOENT));
        let deep = Outer::Wrapped(Inner(std::io::Error::from_raw_os_error(libc::EACCES)));
        assert_eq!(errno_of(&deep), Some(libc::EACCES));
        assert!(is_permission_denied(&deep));
        assert_eq!(errno_of(&Outer::Mount(nix::Error::EBUSY)), Some(libc::EBUSY));
        assert!(!is_permission_denied(&Outer::Mount(nix::Error::EBUSY)));
        assert_eq!(errno_of(&Outer::Leaf), None);
        // An I/O error that is not an OS error carries no errno.
        assert_eq!(errno_of(&std::io::Error::other("not from the kernel")), None);
    }

    #[test]
    fn a_chain_shows_every_source_once() {
        let read = Outer::Read("/etc/x", std::io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(
            Chain(&read).to_string(),
            "reading /etc/x: No such file or directory (os error 2)"
        );
        let deep = Outer::Wrapped(Inner(std::io::Error::from_raw_os_error(libc::EPERM)));
        assert_eq!(
            Chain(&deep).to_string(),
            "wrapped: syscall failed: Operation not permitted (os error 1)"
        );
        assert_eq!(Chain(&Outer::Leaf).to_string(), "no cause");
    }
}
