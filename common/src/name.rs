//! Directory-entry name rules, checked by the client before a request is sent and again by the
//! metadata service before anything is changed.
use crate::error::ErrorKind;

/// Longest name, in bytes (NAME_MAX).
pub const NAME_MAX: usize = 255;

/// Checks a name for a new or looked-up directory entry.
///
/// Empty names, `.`, `..`, and names containing `/` or NUL are `InvalidArgument`; names longer
/// than [`NAME_MAX`] bytes are `NameTooLong`.
pub fn validate_name(name: &[u8]) -> Result<(), ErrorKind> {
    if name.len() > NAME_MAX {
        return Err(ErrorKind::NameTooLong);
    }
    if name.is_empty() || name == b"." || name == b".." || name.iter().any(|&c| c == b'/' || c == 0)
    {
        return Err(ErrorKind::InvalidArgument);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_posix_rules() {
        assert!(validate_name(b"file.txt").is_ok());
        assert!(validate_name(&[b'a'; 255]).is_ok());
        assert_eq!(validate_name(&[b'a'; 256]), Err(ErrorKind::NameTooLong));
        assert_eq!(validate_name(b""), Err(ErrorKind::InvalidArgument));
        assert_eq!(validate_name(b"."), Err(ErrorKind::InvalidArgument));
        assert_eq!(validate_name(b".."), Err(ErrorKind::InvalidArgument));
        assert_eq!(validate_name(b"a/b"), Err(ErrorKind::InvalidArgument));
        assert_eq!(validate_name(b"a\0b"), Err(ErrorKind::InvalidArgument));
        assert!(validate_name("ünïcødé".as_bytes()).is_ok());
    }
}
