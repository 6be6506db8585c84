//! A standby's name: what a synchronous-commit policy names it by. A standby is given one with
//! `--name` (kept in its `state/standby.json`); without one it is named after its id, which
//! never changes, so the default is stable too.

use uuid::Uuid;

/// The longest name, in bytes.
pub const MAX_NAME_LEN: usize = 63;

/// Checks a standby name: 1 to 63 ASCII letters, digits, '_', '-' or '.', starting with a
/// letter or a digit. Names are compared exactly (case matters). The error says what is wrong
/// and where.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a standby name may not be empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "the standby name {:?}… is {} bytes long; at most {MAX_NAME_LEN} are allowed",
            name.chars().take(16).collect::<String>(),
            name.len()
        ));
    }
    for (i, c) in name.char_indices() {
        let ok = c.is_ascii_alphanumeric() || (i > 0 && matches!(c, '_' | '-' | '.'));
        if !ok {
            return Err(format!(
                "the standby name {name:?} has {c:?} at byte {i}: use ASCII letters, digits, '_', '-' or '.', starting with a letter or a digit"
            ));
        }
    }
    Ok(())
}

/// The name of a standby that was given none: `standby-` and the first 8 hex digits of its id.
pub fn default_name(id: &Uuid) -> String {
    let hex = id.simple().to_string();
    format!("standby-{}", &hex[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_with_the_position_of_the_bad_character() {
        for good in ["s1", "a", "db-2.east_1", "A9", &"x".repeat(63)] {
            assert_eq!(check_name(good), Ok(()), "{good}");
        }
        assert!(check_name("").unwrap_err().contains("empty"));
        assert!(check_name(&"x".repeat(64))
            .unwrap_err()
            .contains("64 bytes"));
        let e = check_name("ab c").unwrap_err();
        assert!(e.contains("at byte 2"), "{e}");
        assert!(check_name("-a").unwrap_err().contains("at byte 0"));
        assert!(check_name("*").is_err());
        assert!(check_name("é").is_err());
        assert!(check_name("a,b").is_err());
    }

    #[test]
    fn the_default_name_is_stable_and_valid() {
        let id = Uuid::parse_str("9b1a5a52-0e4e-4a36-8a3b-1c2d3e4f5a6b").unwrap();
        assert_eq!(default_name(&id), "standby-9b1a5a52");
        assert_eq!(default_name(&id), default_name(&id));
        assert_eq!(check_name(&default_name(&Uuid::new_v4())), Ok(()));
    }
}
