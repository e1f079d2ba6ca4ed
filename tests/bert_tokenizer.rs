//! `BertTokenizer` against transformers on the real bert-base-uncased vocabulary
//! (`tests/fixtures/tokenizer_bert.json`): ids, segments, tokens and character offsets of
//! varied text; sentence pairs; the cased rules; and a hub-style `tokenizer.json` whose
//! template and fixed padding are honoured as transformers honours them.
mod common;

use common::fixtures;
use mindformers::{AutoTokenizer, BertTokenizer, EncodeOptions, Padding, Tokenizer};
use serde_json::Value;

fn fixture() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("tokenizer_bert.json")).unwrap())
        .unwrap()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn vocab() -> std::path::PathBuf {
    fixtures().join("../../crates/mf-tokenizers/assets/bert-base-uncased/vocab.txt")
}

fn check_case(tok: &Tokenizer, case: &Value, what: &str) {
    let text = case["text"].as_str().unwrap();
    let pair = case.get("text_pair").and_then(|p| p.as_str());
    let row = tok
        .encode_rows(&[(text, pair)], &EncodeOptions::default())
        .unwrap()
        .remove(0);
    assert_eq!(row.input_ids, u32s(&case["input_ids"]), "{what} {text:?}");
    assert_eq!(
        row.token_type_ids,
        u32s(&case["token_type_ids"]),
        "{what} {text:?}"
    );
    if let Some(offsets) = case.get("offsets") {
        let want: Vec<(usize, usize)> = offsets
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                (
                    o[0].as_u64().unwrap() as usize,
                    o[1].as_u64().unwrap() as usize,
                )
            })
            .collect();
        assert_eq!(row.offsets, want, "{what} offsets of {text:?}");
    }
    if let Some(tokens) = case.get("tokens") {
        let want: Vec<String> = tokens
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().into())
            .collect();
        assert_eq!(row.tokens, want, "{what} tokens of {text:?}");
    }
}

#[test]
fn uncased_ids_offsets_and_pairs_equal_transformers() {
    let fx = fixture();
    // The bundled vocabulary, and the same file loaded from disk.
    for tok in [
        BertTokenizer::bundled_uncased().unwrap(),
        BertTokenizer::from_vocab(vocab(), true).unwrap(),
        AutoTokenizer::from_pretrained("bert_base_uncased").unwrap(),
    ] {
        for case in fx["uncased"].as_array().unwrap() {
            check_case(&tok, case, "uncased");
        }
        for case in fx["pairs"].as_array().unwrap() {
            check_case(&tok, case, "pair");
        }
    }
    println!(
        "{} uncased texts and {} pairs equal transformers'",
        fx["uncased"].as_array().unwrap().len(),
        fx["pairs"].as_array().unwrap().len()
    );
}

#[test]
fn cased_rules_equal_transformers() {
    let fx = fixture();
    let tok = BertTokenizer::from_vocab(vocab(), false).unwrap();
    for case in fx["cased"].as_array().unwrap() {
        check_case(&tok, case, "cased");
    }
}

#[test]
fn a_vocab_txt_directory_loads_with_its_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(vocab(), dir.path().join("vocab.txt")).unwrap();
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"do_lower_case": false, "model_max_length": 512}"#,
    )
    .unwrap();
    let tok = AutoTokenizer::from_pretrained(&dir.path().display().to_string()).unwrap();
    assert_eq!(tok.model_max_length, 512);
    let fx = fixture();
    for case in fx["cased"].as_array().unwrap() {
        check_case(&tok, case, "cased dir");
    }
    assert_eq!(tok.mask_token_id(), Some(103));
    assert_eq!(tok.cls_token_id(), Some(101));
    // Not a BERT vocabulary: a clear error.
    std::fs::write(dir.path().join("vocab.txt"), "a\nb\n").unwrap();
    let e = AutoTokenizer::from_pretrained(&dir.path().display().to_string())
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a BERT WordPiece vocabulary"), "{e}");
}

#[test]
fn a_hub_tokenizer_json_is_honoured_as_transformers_honours_it() {
    let dir = fixtures().join("bert_hub_tokenizer");
    let tok = AutoTokenizer::from_pretrained(&dir.display().to_string()).unwrap();
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let cases = v["cases"].as_array().unwrap();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let pair = case.get("text_pair").and_then(|p| p.as_str());
        let kw = &case["kwargs"];
        let opts = match kw.get("padding").and_then(|p| p.as_str()) {
            Some("max_length") => EncodeOptions {
                padding: Padding::MaxLength,
                max_length: kw["max_length"].as_u64().map(|m| m as usize),
                ..Default::default()
            },
            _ => EncodeOptions::default(),
        };
        let enc = match pair {
            Some(p) => tok.encode_pairs(&[(text, p)], &opts).unwrap(),
            None => tok.encode_batch(&[text], &opts).unwrap(),
        };
        let want = &case["output"];
        assert_eq!(enc.input_ids[0], u32s(&want["input_ids"]), "{text:?} {kw}");
        assert_eq!(
            enc.token_type_ids[0],
            u32s(&want["token_type_ids"]),
            "{text:?} {kw}"
        );
        assert_eq!(
            enc.attention_mask[0],
            u32s(&want["attention_mask"]),
            "{text:?} {kw}"
        );
    }
    assert!(cases.len() >= 5);
    assert_eq!(tok.model_max_length, 64);
}

#[test]
fn truncation_keeps_the_template() {
    let tok = BertTokenizer::bundled_uncased().unwrap();
    let opts = EncodeOptions {
        truncation: true,
        max_length: Some(6),
        ..Default::default()
    };
    let enc = tok
        .encode_pairs(&[("one two three four", "five six seven")], &opts)
        .unwrap();
    let ids = &enc.input_ids[0];
    assert_eq!(ids.len(), 6);
    assert_eq!((ids[0], ids[5]), (101, 102));
    assert_eq!(ids.iter().filter(|i| **i == 102).count(), 2, "{ids:?}");
}
