//! The NLP pipelines against transformers' pipelines on the tiny BERT fixtures
//! (`expected.json` "pipeline" cases, HF format): ids and strings equal, scores within 1e-5;
//! then MindFormers' format, the task registry's names and the errors for bad input.
mod common;

use common::{assert_close, fixtures};
use mindformers::{
    pipeline, AggregationStrategy, CallOptions, OutputFormat, Pipeline, PipelineInput,
};
use serde_json::Value;

fn cases(fixture: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(fixtures().join(fixture).join("expected.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["pipeline"].as_array().unwrap().clone()
}

fn build(task: &str, fixture: &str) -> Box<dyn Pipeline> {
    pipeline(task)
        .model(fixtures().join(fixture).as_path())
        .build_task()
        .unwrap()
}

fn input(v: &Value) -> PipelineInput {
    match v {
        Value::String(s) => PipelineInput::Text(s.clone()),
        Value::Object(o) if o.contains_key("question") => PipelineInput::Qa {
            question: o["question"].as_str().unwrap().into(),
            context: o["context"].as_str().unwrap().into(),
        },
        Value::Object(o) => PipelineInput::Pair {
            text: o["text"].as_str().unwrap().into(),
            text_pair: o["text_pair"].as_str().unwrap().into(),
        },
        other => panic!("unexpected input {other}"),
    }
}

fn options(kwargs: &Value) -> CallOptions {
    let mut o = CallOptions {
        format: OutputFormat::Hf,
        ..Default::default()
    };
    if let Some(k) = kwargs.get("top_k") {
        // HF's top_k=None means every label; any count at least as large gives the same.
        o.top_k = Some(k.as_u64().unwrap_or(1000) as usize);
    }
    if let Some(s) = kwargs.get("aggregation_strategy") {
        o.aggregation_strategy = Some(s.as_str().unwrap().parse::<AggregationStrategy>().unwrap());
    }
    o.doc_stride = kwargs
        .get("doc_stride")
        .and_then(|v| v.as_u64())
        .map(|v| v as usize);
    o.max_seq_len = kwargs
        .get("max_seq_len")
        .and_then(|v| v.as_u64())
        .map(|v| v as usize);
    o.max_answer_len = kwargs
        .get("max_answer_len")
        .and_then(|v| v.as_u64())
        .map(|v| v as usize);
    o.handle_impossible_answer = kwargs
        .get("handle_impossible_answer")
        .is_some_and(|v| v == true);
    o
}

/// Every recorded case of one fixture, input by input.
fn run_cases(task: &str, fixture: &str) {
    let p = build(task, fixture);
    let all = cases(fixture);
    assert!(!all.is_empty());
    for (n, case) in all.iter().enumerate() {
        let opts = options(&case["kwargs"]);
        let (inputs, want): (Vec<PipelineInput>, Vec<Value>) = match &case["inputs"] {
            Value::Array(list) => (
                list.iter().map(input).collect(),
                case["output"].as_array().unwrap().clone(),
            ),
            one => (vec![input(one)], vec![case["output"].clone()]),
        };
        let got = p.run(&inputs, &opts).unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert_close(
                g,
                w,
                1e-5,
                &format!("{fixture} case {n} ({})", case["kwargs"]),
            );
        }
        assert_eq!(got.len(), want.len());
    }
    println!("{fixture}: {} {task} cases equal transformers'", all.len());
}

#[test]
fn fill_mask_equals_transformers() {
    run_cases("fill-mask", "bert_tiny_mlm");
}

#[test]
fn text_classification_equals_transformers() {
    run_cases("text-classification", "bert_tiny_seqcls");
    run_cases("sentiment-analysis", "bert_tiny_seqcls_multilabel");
}

#[test]
fn token_classification_equals_transformers_for_every_strategy() {
    run_cases("ner", "bert_tiny_tokcls");
}

#[test]
fn question_answering_equals_transformers() {
    run_cases("question_answering", "bert_tiny_qa");
}

#[test]
fn feature_extraction_equals_transformers_and_pools_like_sentence_transformers() {
    run_cases("feature_extraction", "bert_tiny_base");
    let text = std::fs::read_to_string(fixtures().join("bert_tiny_base/expected.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let se = &v["sentence_embeddings"];
    let p = build("feature-extraction", "bert_tiny_base");
    let inputs: Vec<PipelineInput> = se["texts"].as_array().unwrap().iter().map(input).collect();
    for (key, pooling, normalize) in [
        ("mean", mindformers::Pooling::Mean, false),
        ("mean_normalized", mindformers::Pooling::Mean, true),
        ("cls", mindformers::Pooling::Cls, false),
    ] {
        let opts = CallOptions {
            pooling: Some(pooling),
            normalize,
            ..Default::default()
        };
        let got = p.run(&inputs, &opts).unwrap();
        assert_close(&Value::Array(got), &se[key], 1e-5, key);
    }
}

#[test]
fn mindformers_format_names_the_answer_text_and_ends_entities_inclusively() {
    let qa = build("question_answering", "bert_tiny_qa");
    let input = PipelineInput::Qa {
        question: "where does john live?".into(),
        context: "john lives in paris and mary works in london.".into(),
    };
    let ms = &qa
        .run(std::slice::from_ref(&input), &CallOptions::default())
        .unwrap()[0];
    let hf = &qa
        .run(
            &[input],
            &CallOptions {
                format: OutputFormat::Hf,
                ..Default::default()
            },
        )
        .unwrap()[0];
    assert_eq!(ms["text"], hf["answer"]);
    assert!(ms.get("answer").is_none());
    let ner = build("token_classification", "bert_tiny_tokcls");
    let i = [PipelineInput::Text(
        "john lives in paris and works for google.".into(),
    )];
    let simple = |format| CallOptions {
        format,
        aggregation_strategy: Some(AggregationStrategy::Simple),
        ..Default::default()
    };
    let ms = &ner.run(&i, &simple(OutputFormat::MindFormers)).unwrap()[0][0];
    let hf = &ner.run(&i, &simple(OutputFormat::Hf)).unwrap()[0][0];
    assert_eq!(ms["end"].as_u64().unwrap() + 1, hf["end"].as_u64().unwrap());
}

#[test]
fn bad_input_is_a_clear_error() {
    let fm = build("fill_mask", "bert_tiny_mlm");
    let err = |p: &dyn Pipeline, i: PipelineInput, o: CallOptions| {
        p.run(&[i], &o).unwrap_err().to_string()
    };
    let e = err(fm.as_ref(), "no mask here".into(), CallOptions::default());
    assert!(e.contains("no mask token ([MASK])"), "{e}");
    let e = err(fm.as_ref(), "".into(), CallOptions::default());
    assert!(e.contains("empty"), "{e}");
    let e = err(
        fm.as_ref(),
        "a [MASK]".into(),
        CallOptions {
            top_k: Some(0),
            ..Default::default()
        },
    );
    assert!(e.contains("top_k"), "{e}");
    let e = err(
        fm.as_ref(),
        "a [MASK]".into(),
        CallOptions {
            aggregation_strategy: Some(AggregationStrategy::First),
            ..Default::default()
        },
    );
    assert!(e.contains("no option aggregation_strategy"), "{e}");
    let qa = build("question_answering", "bert_tiny_qa");
    let e = err(qa.as_ref(), "where?".into(), CallOptions::default());
    assert!(e.contains("question/context"), "{e}");
    let e = err(
        qa.as_ref(),
        PipelineInput::Qa {
            question: "where?".into(),
            context: " ".into(),
        },
        CallOptions::default(),
    );
    assert!(e.contains("context"), "{e}");
    // A model instance without the head the task needs.
    let dir = fixtures().join("bert_tiny_seqcls");
    let cls = mindformers::Bert::from_dir(
        &dir,
        mindformers::Task::SequenceClassification,
        mindformers::Device::Cpu,
        mindformers::DType::F32,
    )
    .unwrap();
    let e = pipeline("fill_mask")
        .model(cls)
        .tokenizer(mindformers::AutoTokenizer::from_pretrained(&dir.display().to_string()).unwrap())
        .build_task()
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("masked LM head"), "{e}");
    let e = pipeline("translation")
        .model("x")
        .build_task()
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("unknown task 'translation'") && e.contains("fill-mask"),
        "{e}"
    );
}
