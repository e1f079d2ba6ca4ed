//! The GPT-2 tokenizer against the seed document and against tiktoken-made expectations
//! (tests/fixtures/tokenizer_gpt2.json, from tools/reference/make_tokenizer_fixtures.py).
mod common;

use mindformers::{
    AutoProcessor, AutoTokenizer, EncodeOptions, GPT2Processor, GPT2Tokenizer, Padding, PaddingSide,
};

#[test]
fn seed_hello_exact_output() {
    let expected = "{'input_ids': [31373, 0], 'token_type_ids': [0, 0], 'attention_mask': [1, 1]}";
    let auto = AutoTokenizer::from_pretrained("gpt2").unwrap();
    assert_eq!(auto.encode("hello!").unwrap().to_string(), expected);
    let gpt2 = GPT2Tokenizer::from_pretrained("gpt2").unwrap();
    assert_eq!(gpt2.encode("hello!").unwrap().to_string(), expected);
    assert_eq!(
        gpt2.encode_ids("I love Beijing, because").unwrap(),
        [40, 1842, 11618, 11, 780]
    );
}

#[test]
fn matches_tiktoken_on_varied_text() {
    let text = std::fs::read_to_string(common::fixtures().join("tokenizer_gpt2.json")).unwrap();
    let cases: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert!(cases.len() >= 30, "fixture has {} cases", cases.len());
    let tok = GPT2Tokenizer::from_pretrained("gpt2").unwrap();
    let mut texts = Vec::new();
    let mut wants = Vec::new();
    for case in &cases {
        let t = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(tok.encode_ids(t).unwrap(), want, "text {t:?}");
        // Byte-level BPE is lossless.
        assert_eq!(tok.decode(&want, false).unwrap(), t, "decode of {t:?}");
        texts.push(t);
        wants.push(want);
    }
    // The batch encoder runs rows on a thread pool: every row still lands in its place.
    let batch = tok.encode_batch(&texts, &EncodeOptions::default()).unwrap();
    assert_eq!(batch.input_ids, wants);
}

#[test]
fn padding_truncation_and_special_tokens() {
    let mut tok = GPT2Tokenizer::from_pretrained("gpt2").unwrap();
    let texts = ["hello!", "I love Beijing, because"];
    let right = tok
        .encode_batch(
            &texts,
            &EncodeOptions {
                padding: Padding::Longest,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(right.input_ids[0], [31373, 0, 50256, 50256, 50256]);
    assert_eq!(right.attention_mask[0], [1, 1, 0, 0, 0]);
    assert_eq!(right.input_ids[1], [40, 1842, 11618, 11, 780]);
    let left = tok
        .encode_batch(
            &texts,
            &EncodeOptions {
                padding: Padding::Longest,
                padding_side: Some(PaddingSide::Left),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(left.input_ids[0], [50256, 50256, 50256, 31373, 0]);
    assert_eq!(left.attention_mask[0], [0, 0, 0, 1, 1]);
    let cut = tok
        .encode_batch(
            &texts,
            &EncodeOptions {
                padding: Padding::MaxLength,
                truncation: true,
                max_length: Some(3),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        cut.input_ids,
        vec![vec![31373, 0, 50256], vec![40, 1842, 11618]]
    );
    assert!(cut
        .to_string()
        .starts_with("{'input_ids': [[31373, 0, 50256], [40, 1842, 11618]]"));

    tok.add_bos_token = true;
    tok.add_eos_token = true;
    assert_eq!(
        tok.encode("hello!").unwrap().input_ids[0],
        [50256, 31373, 0, 50256]
    );
    let ids = [50256, 31373, 0, 50256];
    assert_eq!(tok.decode(&ids, true).unwrap(), "hello!");
    assert_eq!(
        tok.decode(&ids, false).unwrap(),
        "<|endoftext|>hello!<|endoftext|>"
    );
    assert_eq!(
        tok.batch_decode(&[vec![31373], vec![0]], true).unwrap(),
        ["hello", "!"]
    );
    // The special token is never split by the pre-tokenizer.
    assert_eq!(tok.encode_ids("a<|endoftext|>b").unwrap(), [64, 50256, 65]);
}

#[test]
fn processors_match_the_seed() {
    let p = AutoProcessor::from_pretrained("gpt2").unwrap();
    let out = p.call("hello!").unwrap();
    assert_eq!(out.text.size(), [1, 128]);
    assert_eq!(out.text.kind(), tch::Kind::Int);
    let row: Vec<i32> = Vec::try_from(out.text.get(0)).unwrap();
    assert_eq!(&row[..3], [31373, 0, 50256]);
    assert!(row[2..].iter().all(|&x| x == 50256));
    assert_eq!(
        out.to_string(),
        "{'text': Tensor(shape=[1, 128], dtype=Int32, value=\n[[31373,     0, 50256 ... 50256, 50256, 50256]])}"
    );
    let p2 = GPT2Processor::from_pretrained("gpt2").unwrap();
    assert!(p2.call("hello!").unwrap().text.equal(&out.text));
    let custom =
        GPT2Processor::new(GPT2Tokenizer::from_pretrained("gpt2").unwrap(), 256, "ms").unwrap();
    assert_eq!(custom.call("hello!").unwrap().text.size(), [1, 256]);
    assert!(
        GPT2Processor::new(GPT2Tokenizer::from_pretrained("gpt2").unwrap(), 256, "np").is_err()
    );
}

#[test]
fn unknown_names_and_dirs_are_clear_errors() {
    let err = AutoTokenizer::from_pretrained("gpt3")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unknown tokenizer 'gpt3'") && err.contains("gpt2"),
        "{err}"
    );
    let err = AutoTokenizer::from_pretrained("./no/such/dir")
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not exist"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let err = AutoTokenizer::from_pretrained(dir.path().to_str().unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no tokenizer.json"), "{err}");
}

#[test]
fn saved_tokenizer_dir_loads_back() {
    let dir = tempfile::tempdir().unwrap();
    let tok = GPT2Tokenizer::from_pretrained("gpt2").unwrap();
    tok.save_pretrained(dir.path()).unwrap();
    let back = AutoTokenizer::from_pretrained(dir.path().to_str().unwrap()).unwrap();
    assert_eq!(
        back.encode("hello!").unwrap(),
        tok.encode("hello!").unwrap()
    );
    assert_eq!(back.pad_token_id(), Some(50256));
}
