//! HTTP/2 error codes (RFC 9113 §7).

use std::fmt;

/// An HTTP/2 error code, as carried by RST_STREAM and GOAWAY. Unknown codes
/// are kept as they are (RFC 9113 §7: they must not trigger special
/// behaviour).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Reason(pub u32);

impl Reason {
    pub const NO_ERROR: Reason = Reason(0x0);
    pub const PROTOCOL_ERROR: Reason = Reason(0x1);
    pub const INTERNAL_ERROR: Reason = Reason(0x2);
    pub const FLOW_CONTROL_ERROR: Reason = Reason(0x3);
    pub const SETTINGS_TIMEOUT: Reason = Reason(0x4);
    pub const STREAM_CLOSED: Reason = Reason(0x5);
    pub const FRAME_SIZE_ERROR: Reason = Reason(0x6);
    pub const REFUSED_STREAM: Reason = Reason(0x7);
    pub const CANCEL: Reason = Reason(0x8);
    pub const COMPRESSION_ERROR: Reason = Reason(0x9);
    pub const CONNECT_ERROR: Reason = Reason(0xa);
    pub const ENHANCE_YOUR_CALM: Reason = Reason(0xb);
    pub const INADEQUATE_SECURITY: Reason = Reason(0xc);
    pub const HTTP_1_1_REQUIRED: Reason = Reason(0xd);

    /// The RFC 9113 name of the code, or `None` for an unknown code.
    pub const fn name(self) -> Option<&'static str> {
        const NAMES: [&str; 14] = [
            "NO_ERROR",
            "PROTOCOL_ERROR",
            "INTERNAL_ERROR",
            "FLOW_CONTROL_ERROR",
            "SETTINGS_TIMEOUT",
            "STREAM_CLOSED",
            "FRAME_SIZE_ERROR",
            "REFUSED_STREAM",
            "CANCEL",
            "COMPRESSION_ERROR",
            "CONNECT_ERROR",
            "ENHANCE_YOUR_CALM",
            "INADEQUATE_SECURITY",
            "HTTP_1_1_REQUIRED",
        ];
        if (self.0 as usize) < NAMES.len() {
            Some(NAMES[self.0 as usize])
        } else {
            None
        }
    }
}

impl From<u32> for Reason {
    fn from(code: u32) -> Reason {
        Reason(code)
    }
}

impl From<Reason> for u32 {
    fn from(reason: Reason) -> u32 {
        reason.0
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "unknown error code {:#x}", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Reason;

    #[test]
    fn display_names_every_code() {
        let all = [
            (Reason::NO_ERROR, "NO_ERROR", 0x0),
            (Reason::PROTOCOL_ERROR, "PROTOCOL_ERROR", 0x1),
            (Reason::INTERNAL_ERROR, "INTERNAL_ERROR", 0x2),
            (Reason::FLOW_CONTROL_ERROR, "FLOW_CONTROL_ERROR", 0x3),
            (Reason::SETTINGS_TIMEOUT, "SETTINGS_TIMEOUT", 0x4),
            (Reason::STREAM_CLOSED, "STREAM_CLOSED", 0x5),
            (Reason::FRAME_SIZE_ERROR, "FRAME_SIZE_ERROR", 0x6),
            (Reason::REFUSED_STREAM, "REFUSED_STREAM", 0x7),
            (Reason::CANCEL, "CANCEL", 0x8),
            (Reason::COMPRESSION_ERROR, "COMPRESSION_ERROR", 0x9),
            (Reason::CONNECT_ERROR, "CONNECT_ERROR", 0xa),
            (Reason::ENHANCE_YOUR_CALM, "ENHANCE_YOUR_CALM", 0xb),
            (Reason::INADEQUATE_SECURITY, "INADEQUATE_SECURITY", 0xc),
            (Reason::HTTP_1_1_REQUIRED, "HTTP_1_1_REQUIRED", 0xd),
        ];
        for (reason, name, code) in all {
            assert_eq!(reason.0, code);
            assert_eq!(reason.to_string(), name);
        }
    }

    #[test]
    fn display_unknown_code() {
        assert_eq!(Reason(0xe).to_string(), "unknown error code 0xe");
        assert_eq!(Reason(0xdead_beef).to_string(), "unknown error code 0xdeadbeef");
        assert_eq!(Reason(0xe).name(), None);
    }
}
