//! Unit tests of the pieces that need no Snowflake peer.

use super::*;

#[test]
fn the_endpoint_override_rewrites_only_the_account_host() {
    let e = Endpoint {
        account_host: "acme-prod.snowflakecomputing.com".into(),
        scheme: "http".into(),
        host: "127.0.0.1".into(),
        port: 8080,
    };
    let mut api: reqwest::Url =
        "https://ACME-PROD.snowflakecomputing.com/queries/v1/query-request?x=1"
            .parse()
            .unwrap();
    e.rewrite(&mut api);
    assert_eq!(
        api.as_str(),
        "http://127.0.0.1:8080/queries/v1/query-request?x=1"
    );
    let chunk = "https://sfc-eu-ds1.s3.amazonaws.com/results/0/main/data_0_0_1?sig=abc";
    let mut url: reqwest::Url = chunk.parse().unwrap();
    e.rewrite(&mut url);
    assert_eq!(
        url.as_str(),
        chunk,
        "result chunks are fetched from cloud storage"
    );
}

#[test]
fn statements_are_chunked_by_rows_and_bytes() {
    let items: Vec<usize> = (0..7).collect();
    let lens = [10, 10, 100, 10, 10, 10, 10];
    let c = chunk_by_size(&items, lens, 3, 50);
    assert_eq!(c, vec![vec![0, 1], vec![2], vec![3, 4, 5], vec![6]]);
}

#[test]
fn long_texts_are_cut_on_a_character_boundary() {
    let s = "é".repeat(100);
    let cut = cut_to(&s, 51);
    assert!(cut.len() <= 51 && cut.ends_with('…'));
    assert_eq!(cut_to("short", 51), "short");
}

#[test]
fn errors_are_classified_for_the_retry_policy() {
    let api = |code: &str| SnowflakeApiError::ApiError(code.into(), "m".into());
    for code in ["000625", "000630", "390104", "390114"] {
        assert!(classify("op", api(code)).is_transient(), "{code}");
    }
    assert!(session_lost(&api("390104")) && !session_lost(&api("000625")));
    assert!(
        !classify("op", api("002003")).is_transient(),
        "missing object is fatal"
    );
    assert!(classify("op", SnowflakeApiError::EmptyResponse).is_transient());
}

#[test]
fn arrow_integers_of_any_width_and_decimals_decode() {
    use arrow_array::{Decimal128Array, Int16Array, Int8Array, StringArray};
    use std::sync::Arc;
    let batch = RecordBatch::try_from_iter(vec![
        (
            "A",
            Arc::new(Int8Array::from(vec![Some(7), None])) as Arc<dyn Array>,
        ),
        (
            "B",
            Arc::new(Int16Array::from(vec![300, -2])) as Arc<dyn Array>,
        ),
        (
            "C",
            Arc::new(
                Decimal128Array::from(vec![12_345i128, 1])
                    .with_precision_and_scale(38, 0)
                    .unwrap(),
            ) as Arc<dyn Array>,
        ),
        (
            "D",
            Arc::new(StringArray::from(vec!["x", "y"])) as Arc<dyn Array>,
        ),
    ])
    .unwrap();
    let mut rows = Vec::new();
    decode_batch(&batch, &mut rows).unwrap();
    assert_eq!(rows[0].int("a"), Some(7));
    assert_eq!(rows[1].int("a"), None);
    assert_eq!(rows[0].int("b"), Some(300));
    assert_eq!(rows[0].int("c"), Some(12_345));
    assert_eq!(rows[1].text("d").as_deref(), Some("y"));
}

#[test]
fn a_dml_row_count_is_read_only_from_a_column_named_for_it() {
    let row = |pairs: &[(&str, Cell)]| {
        Row(pairs
            .iter()
            .map(|(k, v)| (k.to_ascii_uppercase(), v.clone()))
            .collect())
    };
    let updated = row(&[
        ("number of rows updated", Cell::Int(16)),
        ("number of multi-joined rows updated", Cell::Int(0)),
    ]);
    assert_eq!(rows_reported(&[updated]), Some(16));
    assert_eq!(
        rows_reported(&[row(&[("number of rows updated", Cell::Text("3".into()))])]),
        Some(3)
    );
    // A lost answer, or one naming no count, proves nothing: the callers read
    // back instead of skipping on a guess.
    assert_eq!(rows_reported(&[]), None);
    assert_eq!(rows_reported(&[row(&[("step_id", Cell::Int(5))])]), None);
    assert_eq!(
        rows_reported(&[row(&[("number of rows updated", Cell::Null)])]),
        None
    );
}
