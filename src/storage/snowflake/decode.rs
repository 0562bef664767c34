//! Arrow decoding: result batches into rows of named cells (integers of any
//! width and decimals, text), and the affected-row counts DML answers carry.

use super::*;

/// One decoded cell.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Cell {
    Null,
    Int(i64),
    Float(f64),
    Text(String),
}

/// One row, by upper-cased column name.
#[derive(Debug, Default)]
pub(super) struct Row(pub(super) HashMap<String, Cell>);

impl Row {
    pub(super) fn cell(&self, name: &str) -> &Cell {
        self.0
            .get(&name.to_ascii_uppercase())
            .unwrap_or(&Cell::Null)
    }
    pub(super) fn int(&self, name: &str) -> Option<i64> {
        match self.cell(name) {
            Cell::Int(i) => Some(*i),
            Cell::Float(f) => Some(*f as i64),
            Cell::Text(t) => t.trim().parse().ok(),
            Cell::Null => None,
        }
    }
    pub(super) fn text(&self, name: &str) -> Option<String> {
        match self.cell(name) {
            Cell::Text(t) => Some(t.clone()),
            Cell::Int(i) => Some(i.to_string()),
            Cell::Float(f) => Some(f.to_string()),
            Cell::Null => None,
        }
    }
}

pub(super) fn decode_batch(b: &RecordBatch, out: &mut Vec<Row>) -> Result<(), String> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::*;
    let schema = b.schema();
    let mut rows: Vec<Row> = (0..b.num_rows()).map(|_| Row::default()).collect();
    for (ci, field) in schema.fields().iter().enumerate() {
        let col = b.column(ci);
        let name = field.name().to_ascii_uppercase();
        for (ri, row) in rows.iter_mut().enumerate() {
            let cell = if col.is_null(ri) {
                Cell::Null
            } else {
                match col.data_type() {
                    DataType::Int8 => Cell::Int(col.as_primitive::<Int8Type>().value(ri).into()),
                    DataType::Int16 => Cell::Int(col.as_primitive::<Int16Type>().value(ri).into()),
                    DataType::Int32 => Cell::Int(col.as_primitive::<Int32Type>().value(ri).into()),
                    DataType::Int64 => Cell::Int(col.as_primitive::<Int64Type>().value(ri)),
                    DataType::UInt8 => Cell::Int(col.as_primitive::<UInt8Type>().value(ri).into()),
                    DataType::UInt16 => {
                        Cell::Int(col.as_primitive::<UInt16Type>().value(ri).into())
                    }
                    DataType::UInt32 => {
                        Cell::Int(col.as_primitive::<UInt32Type>().value(ri).into())
                    }
                    DataType::UInt64 => {
                        Cell::Int(col.as_primitive::<UInt64Type>().value(ri) as i64)
                    }
                    DataType::Float32 => {
                        Cell::Float(col.as_primitive::<Float32Type>().value(ri).into())
                    }
                    DataType::Float64 => Cell::Float(col.as_primitive::<Float64Type>().value(ri)),
                    DataType::Decimal128(_, scale) => {
                        let v = col.as_primitive::<Decimal128Type>().value(ri);
                        if *scale == 0 {
                            Cell::Int(v as i64)
                        } else {
                            Cell::Float(v as f64 / 10f64.powi(i32::from(*scale)))
                        }
                    }
                    DataType::Boolean => Cell::Int(col.as_boolean().value(ri).into()),
                    DataType::Utf8 => Cell::Text(col.as_string::<i32>().value(ri).to_string()),
                    DataType::LargeUtf8 => Cell::Text(col.as_string::<i64>().value(ri).to_string()),
                    other => return Err(format!("column {name}: unsupported Arrow type {other}")),
                }
            };
            row.0.insert(name.clone(), cell);
        }
    }
    out.extend(rows);
    Ok(())
}

pub(super) fn decode(op: &'static str, r: QueryResult) -> Result<Vec<Row>, StoreError> {
    let mut out = Vec::new();
    match r {
        QueryResult::Empty => {}
        QueryResult::Arrow(batches) => {
            for b in &batches {
                decode_batch(b, &mut out).map_err(|e| StoreError::fatal(op, e))?;
            }
        }
        QueryResult::Json(j) => {
            let names: Vec<String> = j
                .schema
                .iter()
                .map(|f| f.name.to_ascii_uppercase())
                .collect();
            for r in j.value.as_array().into_iter().flatten() {
                let mut row = Row::default();
                for (i, v) in r.as_array().into_iter().flatten().enumerate() {
                    let name = names
                        .get(i)
                        .cloned()
                        .unwrap_or_else(|| format!("COLUMN{}", i + 1));
                    let cell = match v {
                        serde_json::Value::Null => Cell::Null,
                        serde_json::Value::String(s) => Cell::Text(s.clone()),
                        other => Cell::Text(other.to_string()),
                    };
                    row.0.insert(name, cell);
                }
                out.push(row);
            }
        }
    }
    Ok(out)
}

/// The number of rows a DML statement reports, only when its answer says so
/// in a column named for it (`number of rows updated`, …): an answer that
/// lost its row or names no count gives `None`, so callers that skip a
/// read-back on this count never skip it on a guess.
pub(super) fn rows_reported(rows: &[Row]) -> Option<u64> {
    let r = rows.first()?;
    r.0.iter()
        .find(|(k, _)| k.to_ascii_lowercase().starts_with("number of rows"))
        .and_then(|(_, v)| match v {
            Cell::Int(i) => u64::try_from(*i).ok(),
            Cell::Float(f) if *f >= 0.0 => Some(*f as u64),
            Cell::Text(t) => t.trim().parse().ok(),
            _ => None,
        })
}

/// The number of rows a DML statement reports (first column of its result).
pub(super) fn affected(rows: &[Row]) -> u64 {
    rows.first()
        .and_then(|r| {
            r.0.iter()
                .filter(|(k, _)| k.starts_with("NUMBER OF ROWS") || k.starts_with("COLUMN1"))
                .chain(r.0.iter())
                .find_map(|(_, v)| match v {
                    Cell::Int(i) => Some(*i as u64),
                    Cell::Text(t) => t.trim().parse().ok(),
                    _ => None,
                })
        })
        .unwrap_or(0)
}
