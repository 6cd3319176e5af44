//! GGUF headers as Tightwad reads files it did not write (a model a user points `tightwad inspect`
//! at, the agent's model folders, a copy cut off mid-download): `read_model_header` (what
//! `read_model`, `read_summary` and `read_header` run), then what `inspect` and the agent compute
//! from the result — the inspect report and its text, the placement byte counts (`ModelBytes`,
//! from the tensor table and from the summary a peer sends) and a plan on a small machine.
//!
//! Properties: no panic (debug assertions are on: an overflow is a finding); memory bounded by
//! the input, whatever counts and lengths the header claims (`scripts/fuzz` runs this with
//! `-malloc_limit_mb`); what parses is consistent (one tensor entry per claimed tensor, the
//! tensor bytes within the file).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tightwad_coordinator::inspect::inspection;
use tightwad_placement::gguf::{read_header, read_model_header};
use tightwad_placement::plan::{plan, Device, DeviceKind, ModelBytes, PlanOptions, Target};

fuzz_target!(|data: &[u8]| {
    let len = data.len() as u64;
    let header = read_header(data, len);
    let Ok(model) = read_model_header(data, len) else {
        assert!(
            header.is_err(),
            "read_header and read_model_header disagree"
        );
        return;
    };
    assert_eq!(header.ok().as_ref(), Some(&model.summary));
    assert_eq!(model.tensors.len() as u64, model.summary.tensor_count);
    assert!(model.summary.tensor_bytes <= len);
    assert!(model.summary.expert_tensor_bytes <= model.summary.tensor_bytes);
    // The data section starts after the header, rounded up to the (clamped) alignment.
    assert!(model.data_offset <= len + (1 << 20));
    let _ = model.missing_bytes();
    let _ = model.tensor_table_bytes();

    // `tightwad inspect MODEL.gguf`
    let report = inspection(Path::new("fuzzed.gguf"), &model);
    let _ = report.render();

    // The placement planner's inputs (inspect --plan, the agent's memory prediction, doctor).
    let bytes = ModelBytes::from_gguf(&model);
    let _ = bytes.total_weights();
    let from_summary = ModelBytes::from_summary(&model.summary, len);
    let _ = from_summary.total_weights();
    let target = Target {
        host: "local".into(),
        ram_bytes: 64 << 30,
        devices: vec![
            Device {
                name: "RPC0[desktop:50052]".into(),
                kind: DeviceKind::Rpc,
                host: "desktop".into(),
                memory_bytes: 12 << 30,
            },
            Device {
                name: "GPU0".into(),
                kind: DeviceKind::Gpu,
                host: "local".into(),
                memory_bytes: 24 << 30,
            },
        ],
    };
    // inspect's default: the model's own training context, whatever the header claims.
    let _ = plan(&bytes, &target, &PlanOptions::default());
});
