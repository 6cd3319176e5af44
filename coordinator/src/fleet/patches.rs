//! The llama.cpp patches Tightwad carries (`patches/llama.cpp/`, see its README), compiled into the
//! binary so `tightwad build` can send them to every agent: one-pass verification of a client's
//! draft (`draft_tokens`), per-request `speculative.n_max`, a draft model that skips the requests
//! that say `speculative.n_max: 0`, the text of each generated token (`return_pieces`), and a
//! completion that ends after a token its model is unsure of (`stop_p_min`, for drafts), and a
//! reply that leaves out the prompt's text when the client's `response_fields` do.

use tightwad_protocol::messages::SourcePatch;

/// Every bundled patch, in the order they apply. A unit test checks this list against the folder.
const BUNDLED: &[(&str, &str)] = &[
    (
        "0001-server-client-draft-tokens.patch",
        include_str!("../../../patches/llama.cpp/0001-server-client-draft-tokens.patch"),
    ),
    (
        "0002-server-n-max-0-skips-the-draft-model.patch",
        include_str!("../../../patches/llama.cpp/0002-server-n-max-0-skips-the-draft-model.patch"),
    ),
    (
        "0003-server-return-pieces.patch",
        include_str!("../../../patches/llama.cpp/0003-server-return-pieces.patch"),
    ),
    (
        "0004-server-stop-p-min.patch",
        include_str!("../../../patches/llama.cpp/0004-server-stop-p-min.patch"),
    ),
    (
        "0005-server-response-fields-skip-the-prompt.patch",
        include_str!(
            "../../../patches/llama.cpp/0005-server-response-fields-skip-the-prompt.patch"
        ),
    ),
    (
        "0006-server-cached-prefix.patch",
        include_str!("../../../patches/llama.cpp/0006-server-cached-prefix.patch"),
    ),
];

/// The bundled patches, as a build request carries them.
pub fn bundled() -> Vec<SourcePatch> {
    BUNDLED
        .iter()
        .map(|(name, diff)| SourcePatch {
            name: name.to_string(),
            diff: diff.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    /// A patch added to the folder but not to `BUNDLED` (or the reverse) would silently not reach
    /// the agents' builds.
    #[test]
    fn every_patch_in_the_folder_is_bundled_in_order() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../patches/llama.cpp");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .expect("patches/llama.cpp")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".patch"))
            .collect();
        on_disk.sort();
        let bundled: Vec<String> = super::BUNDLED.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(bundled, on_disk);
        for (name, diff) in super::BUNDLED {
            let file = std::fs::read_to_string(dir.join(name)).expect("patch file");
            assert_eq!(&file, diff, "{name} differs from the bundled copy");
        }
    }
}
