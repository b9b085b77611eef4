use super::*;
use crate::error::ErrorKind;

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_+=,.@-".contains(c)
}

#[test]
fn user_name_shape() {
    let n = user_name("readonly", 1000);
    assert!(n.starts_with("nomadfs-readonly-u1000-"), "{n}");
    let suffix = &n["nomadfs-readonly-u1000-".len()..];
    assert_eq!(suffix.len(), 8, "{n}");
    assert!(suffix.chars().all(|c| c.is_ascii_hexdigit()), "{n}");
    assert!(n.chars().all(allowed), "{n}");
}

#[test]
fn user_names_differ() {
    assert_ne!(user_name("r", 1), user_name("r", 1));
}

#[test]
fn user_name_replaces_forbidden_chars() {
    let n = user_name_with_suffix("a b/c:dé_+=,.@-x", 7, "deadbeef");
    assert_eq!(n, "nomadfs-a-b-c-d-_+=,.@-x-u7-deadbeef");
    assert!(n.chars().all(allowed));
}

#[test]
fn user_name_truncates_role_keeps_uid_and_suffix() {
    let role = "r".repeat(200);
    let n = user_name_with_suffix(&role, u32::MAX, "01234567");
    assert_eq!(n.len(), USER_NAME_MAX, "{n}");
    assert!(n.ends_with(&format!("-u{}-01234567", u32::MAX)), "{n}");
    assert!(n.starts_with("nomadfs-rrr"), "{n}");
    // Multi-byte role characters count as one '-' each, never split a char.
    let n = user_name(&"é".repeat(100), 0);
    assert!(n.len() <= USER_NAME_MAX && n.chars().all(allowed), "{n}");
    // Short names are not padded.
    assert_eq!(
        user_name_with_suffix("", 5, "abcdefgh"),
        "nomadfs--u5-abcdefgh"
    );
}

#[test]
fn new_rejects_bad_input_without_echoing_the_secret() {
    let mut creds = RootCredentials::new("AKIDEXAMPLE", SecretBytes::from_slice(b"s3cr3t"));
    creds.endpoint = Some("ftp://example".into());
    let e = AwsIam::new(&creds).err().map(|e| (e.kind, e.message));
    let (kind, msg) = e.unwrap_or((ErrorKind::Io, String::new()));
    assert_eq!(kind, ErrorKind::InvalidInput);
    assert!(!msg.contains("s3cr3t"));

    let creds = RootCredentials::new("AKIDEXAMPLE", SecretBytes::from_slice(b""));
    assert_eq!(
        AwsIam::new(&creds).err().map(|e| e.kind),
        Some(ErrorKind::InvalidInput)
    );
    let creds = RootCredentials::new(" ", SecretBytes::from_slice(b"x"));
    assert_eq!(
        AwsIam::new(&creds).err().map(|e| e.kind),
        Some(ErrorKind::InvalidInput)
    );
}

#[test]
fn debug_does_not_show_secrets() {
    let creds = RootCredentials::new("AKIDEXAMPLE", SecretBytes::from_slice(b"s3cr3t"));
    assert!(!format!("{creds:?}").contains("s3cr3t"));
    let iam = AwsIam::new(&creds);
    assert!(!format!("{iam:?}").contains("s3cr3t"));
}
