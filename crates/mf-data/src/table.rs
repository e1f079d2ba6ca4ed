//! Tables of named columns from JSONL / JSON, CSV and Parquet files (the format of Hugging
//! Face hub datasets), as rows of JSON objects; the task datasets read their columns
//! (`text`, `label`, `tokens` + `ner_tags`, SQuAD's `question` / `context` / `answers`) from
//! them.
use std::path::Path;

use mf_core::{invalid, MfError, Result};
use serde_json::{Map, Value};

/// One row: column name to value.
pub type Row = Map<String, Value>;

/// Reads every row of a `.jsonl` / `.json` (a list of objects), `.csv` (a header row) or
/// `.parquet` file.
pub fn read_rows(path: impl AsRef<Path>) -> Result<Vec<Row>> {
    let path = path.as_ref();
    if !path.is_file() {
        return Err(MfError::NotFound(format!(
            "{}: no such data file",
            path.display()
        )));
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let rows = match ext.as_str() {
        "jsonl" | "ndjson" => read_jsonl(path)?,
        "json" => read_json(path)?,
        "csv" => read_csv(path)?,
        "parquet" => read_parquet(path)?,
        other => {
            return Err(invalid(format!(
                "{}: unknown data format '.{other}'; use .jsonl, .json, .csv or .parquet",
                path.display()
            )))
        }
    };
    if rows.is_empty() {
        return Err(invalid(format!(
            "{}: the file holds no rows",
            path.display()
        )));
    }
    Ok(rows)
}

fn object(v: Value, path: &Path, line: usize) -> Result<Row> {
    match v {
        Value::Object(m) => Ok(m),
        other => Err(MfError::config(
            path.display(),
            format!("row {line} is {other}, not an object with named columns"),
        )),
    }
}

fn read_jsonl(path: &Path) -> Result<Vec<Row>> {
    let text = std::fs::read_to_string(path).map_err(|e| MfError::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let v: Value = serde_json::from_str(l)
                .map_err(|e| MfError::config(path.display(), format!("line {}: {e}", i + 1)))?;
            object(v, path, i + 1)
        })
        .collect()
}

fn read_json(path: &Path) -> Result<Vec<Row>> {
    let v: Value = mf_core::config::read_json(path)?;
    match v {
        Value::Array(a) => a
            .into_iter()
            .enumerate()
            .map(|(i, v)| object(v, path, i + 1))
            .collect(),
        _ => Err(MfError::config(
            path.display(),
            "a .json data file must hold a list of objects (use .jsonl for one object per line)",
        )),
    }
}

/// CSV cells are strings; integers and floats are parsed so label columns compare as
/// numbers, and cells holding JSON lists (`["a", "b"]`) become lists.
fn read_csv(path: &Path) -> Result<Vec<Row>> {
    let mut r =
        csv::Reader::from_path(path).map_err(|e| MfError::config(path.display(), e.to_string()))?;
    let headers: Vec<String> = r
        .headers()
        .map_err(|e| MfError::config(path.display(), e.to_string()))?
        .iter()
        .map(String::from)
        .collect();
    let mut rows = Vec::new();
    for (i, rec) in r.records().enumerate() {
        let rec =
            rec.map_err(|e| MfError::config(path.display(), format!("row {}: {e}", i + 1)))?;
        let mut m = Map::new();
        for (h, cell) in headers.iter().zip(rec.iter()) {
            let v = if let Ok(n) = cell.parse::<i64>() {
                Value::from(n)
            } else if let Ok(f) = cell.parse::<f64>() {
                Value::from(f)
            } else if cell.starts_with('[') || cell.starts_with('{') {
                serde_json::from_str(cell).unwrap_or_else(|_| Value::String(cell.into()))
            } else {
                Value::String(cell.into())
            };
            m.insert(h.clone(), v);
        }
        rows.push(m);
    }
    Ok(rows)
}

fn read_parquet(path: &Path) -> Result<Vec<Row>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file = std::fs::File::open(path).map_err(|e| MfError::io(path, e))?;
    let reader = SerializedFileReader::new(file).map_err(|e| {
        MfError::config(path.display(), format!("not a readable parquet file: {e}"))
    })?;
    let iter = reader
        .get_row_iter(None)
        .map_err(|e| MfError::config(path.display(), e.to_string()))?;
    let mut rows = Vec::new();
    for (i, row) in iter.enumerate() {
        let row =
            row.map_err(|e| MfError::config(path.display(), format!("row {}: {e}", i + 1)))?;
        rows.push(object(row.to_json_value(), path, i + 1)?);
    }
    Ok(rows)
}

/// A column of a row, or an error naming the column, the row and the columns there are.
pub fn column<'a>(row: &'a Row, name: &str, index: usize) -> Result<&'a Value> {
    row.get(name).ok_or_else(|| {
        invalid(format!(
            "row {index} has no column '{name}'; its columns are: {}",
            row.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
    })
}

/// A list column (parquet nested lists come as `{"list": [{"element": x}, ...]}` in some
/// writers; plain lists as arrays).
pub fn list<'a>(v: &'a Value, name: &str, index: usize) -> Result<Vec<&'a Value>> {
    match v {
        Value::Array(a) => Ok(a.iter().collect()),
        _ => Err(invalid(format!(
            "row {index}: column '{name}' must be a list, got {v}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_csv_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let j = dir.path().join("a.jsonl");
        std::fs::write(
            &j,
            "{\"text\": \"hi\", \"label\": 1}\n\n{\"text\": \"yo\", \"label\": 0}\n",
        )
        .unwrap();
        let rows = read_rows(&j).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1]["label"], 0);
        let c = dir.path().join("a.csv");
        std::fs::write(&c, "text,label,tags\n\"a, b\",2,\"[1, 2]\"\n").unwrap();
        let rows = read_rows(&c).unwrap();
        assert_eq!(rows[0]["text"], "a, b");
        assert_eq!(rows[0]["label"], 2);
        assert_eq!(rows[0]["tags"], serde_json::json!([1, 2]));
        let e = column(&rows[0], "sentence", 0).unwrap_err().to_string();
        assert!(
            e.contains("no column 'sentence'") && e.contains("label, tags, text"),
            "{e}"
        );
        let bad = dir.path().join("b.jsonl");
        std::fs::write(&bad, "{\"text\": 1}\n[1]\n").unwrap();
        assert!(read_rows(&bad).unwrap_err().to_string().contains("row 2"));
        let e = read_rows(dir.path().join("x.txt")).unwrap_err().to_string();
        assert!(e.contains("no such data file"), "{e}");
        let p = dir.path().join("x.parquet");
        std::fs::write(&p, b"not parquet").unwrap();
        assert!(read_rows(&p)
            .unwrap_err()
            .to_string()
            .contains("not a readable parquet file"));
    }

    #[test]
    fn parquet_rows_as_hub_datasets_store_them() {
        use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
        use parquet::file::properties::WriterProperties;
        use parquet::file::writer::SerializedFileWriter;
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("train-00000-of-00001.parquet");
        let schema = Arc::new(
            parquet::schema::parser::parse_message_type(
                "message schema { REQUIRED BYTE_ARRAY text (UTF8); REQUIRED INT64 label; }",
            )
            .unwrap(),
        );
        let props = Arc::new(
            WriterProperties::builder()
                .set_compression(parquet::basic::Compression::SNAPPY)
                .build(),
        );
        let mut w =
            SerializedFileWriter::new(std::fs::File::create(&p).unwrap(), schema, props).unwrap();
        let mut rg = w.next_row_group().unwrap();
        let mut c = rg.next_column().unwrap().unwrap();
        c.typed::<ByteArrayType>()
            .write_batch(
                &[
                    ByteArray::from("a good film"),
                    ByteArray::from("a bad film"),
                ],
                None,
                None,
            )
            .unwrap();
        c.close().unwrap();
        let mut c = rg.next_column().unwrap().unwrap();
        c.typed::<Int64Type>()
            .write_batch(&[1, 0], None, None)
            .unwrap();
        c.close().unwrap();
        rg.close().unwrap();
        w.close().unwrap();
        let rows = read_rows(&p).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0]["text"], "a good film");
        assert_eq!(rows[1]["label"], 0);
    }
}
