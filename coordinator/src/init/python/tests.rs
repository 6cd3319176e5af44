//! Unit tests of the YAML readers and of what `convert` says about a config it cannot read.

use super::yaml::{byte_size, slug};
use super::*;

#[test]
fn sizes_and_names() {
    assert_eq!(byte_size(&Yaml::from("10MB")), Some(10 << 20));
    assert_eq!(byte_size(&Yaml::from("512k")), Some(512 << 10));
    assert_eq!(byte_size(&Yaml::from(4096)), Some(4096));
    assert_eq!(byte_size(&Yaml::from("lots")), None);
    assert_eq!(slug("Qwen3 32B"), "Qwen3-32B");
}

#[test]
fn bad_yaml_is_a_clear_error() {
    let e = convert("proxy: [unclosed").unwrap_err().to_string();
    assert!(e.contains("not a valid YAML config"), "{e}");
    assert!(convert("- a list").is_err());
}
