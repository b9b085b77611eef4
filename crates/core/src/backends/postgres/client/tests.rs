use super::*;

#[test]
fn role_name_shape_and_limit() {
    let n = role_name("readonly", 1000);
    assert!(n.starts_with("nomadfs-readonly-u1000-"), "{n}");
    assert_eq!(n.len(), "nomadfs-readonly-u1000-".len() + 8);
    assert_ne!(role_name("r", 1), role_name("r", 1));
    let long = role_name_with_suffix(&"R".repeat(200), u32::MAX, "01234567");
    assert_eq!(long.len(), NAME_MAX, "{long}");
    assert!(
        long.ends_with(&format!("-u{}-01234567", u32::MAX)),
        "{long}"
    );
    assert!(long.starts_with("nomadfs-rrr"), "{long}");
    let odd = role_name_with_suffix("a b\"c'dé", 7, "deadbeef");
    assert_eq!(odd, "nomadfs-a-b-c-d--u7-deadbeef");
    let n = role_name(&"é".repeat(100), 0);
    assert!(n.len() <= NAME_MAX, "{n}");
}

#[test]
fn passwords_are_long_alphanumeric_and_differ() {
    let a = password();
    let b = password();
    assert_eq!(a.len(), PASSWORD_LEN);
    assert!(a.expose().iter().all(u8::is_ascii_alphanumeric));
    assert_ne!(a.expose(), b.expose());
}

#[test]
fn substitute_and_join() {
    let s = substitute(
        "CREATE ROLE \"{{name}}\" PASSWORD '{{password}}' VALID UNTIL '{{expiration}}' {{x}}",
        &[("name", "n"), ("password", "p"), ("expiration", "e")],
    );
    assert_eq!(s, "CREATE ROLE \"n\" PASSWORD 'p' VALID UNTIL 'e' {{x}}");
    assert_eq!(
        join(&["a;".into(), " ".into(), "b -- c".into()]),
        "a;;\nb -- c"
    );
}
