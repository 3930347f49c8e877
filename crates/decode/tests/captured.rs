//! Decodes messages captured from a real PostgreSQL 15 (see fixtures/capture.sh and
//! fixtures/workload.sql) with both decoders, and checks the events: the documented mapping for
//! each type family, keys, TOAST, replica identity, truncate, context, and that pgoutput and
//! wal2json give the same events byte for byte.

use pgevents_decode::encode::close_event;
use pgevents_decode::{
    Catalog, CatalogNeed, DecodeError, Decoded, Decoder, Plugin, PrimaryKey, Signals, TableRef, TransactionBuilder,
    TypeInfo, ValueOptions,
};
use serde_json::{json, Value};

const CAPTURED: &str = include_str!("fixtures/captured.txt");

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn messages(plugin: &str) -> Vec<Vec<u8>> {
    CAPTURED
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .filter(|(p, _)| *p == plugin)
        .map(|(_, payload)| if plugin == "pgoutput" { hex(payload) } else { payload.as_bytes().to_vec() })
        .collect()
}

fn catalog() -> Catalog {
    let mut catalog = Catalog::default();
    for line in CAPTURED.lines().filter(|l| l.starts_with("type\t")) {
        let f: Vec<&str> = line.split('\t').collect();
        catalog.insert_types([TypeInfo {
            oid: f[1].parse().unwrap(),
            typtype: f[2].as_bytes()[0],
            category: f[3].as_bytes()[0],
            elem: f[4].parse().unwrap(),
            base: f[5].parse().unwrap(),
            delim: f[6].as_bytes()[0],
        }]);
    }
    catalog
}

fn primary_key(table: &TableRef) -> PrimaryKey {
    PrimaryKey::new(match table.name.as_str() {
        "fx_types" | "fx_full" => vec!["id".into()],
        "fx_composite" => vec!["a".into(), "b".into()],
        _ => vec![],
    })
}

/// Decodes every message as the producer does (resolving catalog needs, then retrying) and
/// returns the finished event bodies of committed, non-skipped transactions.
fn events(plugin: Plugin, options: ValueOptions) -> Vec<String> {
    let name = plugin.name();
    let mut decoder = Decoder::new(plugin, options);
    let mut catalog = catalog();
    // The fixtures' context was written before messages were signed.
    let signals = Signals { accept_unsigned: true, ..Signals::default() };
    let mut tx = TransactionBuilder::new(pgevents_decode::DEFAULT_MAX_CONTEXT_BYTES, signals);
    let mut pending: Vec<Vec<u8>> = Vec::new();
    let mut out = Vec::new();
    for message in messages(name) {
        let decoded = loop {
            match decoder.decode(&message, &catalog) {
                Err(DecodeError::NeedCatalog(CatalogNeed::PrimaryKey(table))) => {
                    catalog.insert_primary_key(&table, primary_key(&table));
                    decoder.catalog_updated(&catalog);
                }
                other => break other.unwrap_or_else(|e| panic!("{name}: {e}")),
            }
        };
        match decoded {
            Decoded::Begin(begin) => tx.begin(begin).unwrap(),
            Decoded::Row(change) => {
                let mut body = Vec::new();
                tx.row(&change, &mut body).unwrap();
                pending.push(body);
            }
            Decoded::Truncate(tables) => {
                for table in tables {
                    let mut body = Vec::new();
                    tx.truncate(&table, &mut body).unwrap();
                    pending.push(body);
                }
            }
            Decoded::Message(m) => {
                tx.message(&m).unwrap();
            }
            Decoded::Commit => {
                let outcome = tx.commit().unwrap();
                for mut body in pending.drain(..) {
                    if !outcome.skip {
                        close_event(&mut body, outcome.context.as_deref());
                        out.push(String::from_utf8(body).unwrap());
                    }
                }
            }
            Decoded::Relation(_) | Decoded::Ignored => {}
        }
    }
    out
}

fn parsed(events: &[String]) -> Vec<Value> {
    events.iter().map(|e| serde_json::from_str(e).unwrap_or_else(|err| panic!("{e}: {err}"))).collect()
}

#[test]
fn pgoutput_and_wal2json_give_the_same_events_byte_for_byte() {
    let pgoutput = events(Plugin::PgOutput, ValueOptions::default());
    let wal2json = events(Plugin::Wal2Json, ValueOptions::default());
    assert_eq!(
        pgoutput.len(),
        17,
        "6 fx_types + 3 fx_composite + 3 fx_nopk + 2 fx_full + 1 with context + 2 truncates"
    );
    assert_eq!(pgoutput, wal2json);
}

#[test]
fn every_type_family_maps_as_documented() {
    let events = parsed(&events(Plugin::PgOutput, ValueOptions::default()));
    let row = &events[0]["new"];
    assert_eq!(events[0]["table_name"], "public.fx_types");
    assert_eq!(events[0]["action"], "I");
    assert_eq!(row["id"], 1);
    assert_eq!(row["i2"], 2);
    assert_eq!(row["f4"], 1.5);
    assert_eq!(row["f8"], 0.1);
    assert_eq!(row["b"], true);
    assert_eq!(row["t"], "a\"b\\c\n");
    assert_eq!(row["j"], json!({"a": [1, 2]}));
    assert_eq!(row["jb"], json!({"k": {"n": null}}));
    assert_eq!(row["by"], "AQL/");
    assert_eq!(row["ts"], "2026-11-23T10:00:00.5");
    assert_eq!(row["tstz"], "2026-11-23T10:00:00.123456Z");
    assert_eq!(row["d"], "2026-11-23");
    assert_eq!(row["iv"], "1 day 02:00:00");
    assert_eq!(row["u"], "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
    assert_eq!(row["ia"], json!([1, null, 3]));
    assert_eq!(row["ta"], json!(["x y", null, "q\"z"]));
    assert_eq!(row["na"], json!([1.50, "NaN"]));
    assert_eq!(row["ja"], json!([{"a": 1}]));
    assert_eq!(row["m"], "happy");
    assert_eq!(row["ma"], json!(["sad", "happy"]));
    assert_eq!(row["dom"], 7, "a domain over integer is an integer");
    assert_eq!(row["big"].as_str().unwrap().len(), 9600);
    // numeric keeps its exact digits in the body
    assert!(events_raw(0).contains(r#""n":12.3400"#));
    let special = &events[1]["new"];
    assert!(events_raw(1).contains(r#""n":123456789012345678901234567890.123456789"#));
    assert_eq!(special["f8"], 1e300);
    assert_eq!(special["tstz"], "infinity");
    assert_eq!(special["ts"], "-infinity");
    assert_eq!(special["d"], "0044-03-15 BC");
    assert_eq!(special["i4"], Value::Null);
    assert_eq!(events[0]["old"], json!({}));
    assert_eq!(events[0]["diff"], events[0]["new"]);
    assert_eq!(events[0]["id"], 1);
}

fn events_raw(i: usize) -> String {
    events(Plugin::PgOutput, ValueOptions::default())[i].clone()
}

#[test]
fn numeric_as_string_option() {
    let events = parsed(&events(Plugin::PgOutput, ValueOptions { numeric_as_string: true }));
    assert_eq!(events[0]["new"]["n"], "12.3400");
    assert_eq!(events[0]["new"]["na"], json!(["1.50", "NaN"]));
    assert_eq!(events[0]["new"]["i4"], 3, "only numeric is affected");
}

#[test]
fn updates_deletes_keys_and_toast() {
    let events = parsed(&events(Plugin::PgOutput, ValueOptions::default()));
    // UPDATE fx_types SET t = 'changed', i4 = 4: DEFAULT identity, key unchanged, big TOASTed.
    let update = &events[3];
    assert_eq!(update["action"], "U");
    assert_eq!(update["old"], json!({"id": 1}), "DEFAULT identity: the key columns only");
    assert!(update["new"].get("big").is_none(), "an unchanged TOASTed value is left out, not null");
    assert!(update["diff"].get("big").is_none());
    assert_eq!(update["diff"]["t"], "changed");
    assert!(update["diff"].get("id").is_none(), "the unchanged key is not in diff");
    // UPDATE fx_types SET id = 10 WHERE id = 3: key change carries the old key.
    assert_eq!(events[4]["old"], json!({"id": 3}));
    assert_eq!(events[4]["id"], 10);
    assert_eq!(events[4]["diff"]["id"], 10);
    // DELETE fx_types WHERE id = 2
    assert_eq!(events[5]["action"], "D");
    assert_eq!(events[5]["old"], json!({"id": 2}));
    assert_eq!(events[5]["new"], json!({}));
    assert_eq!(events[5]["diff"], json!({"id": 2}));
    assert_eq!(events[5]["id"], 2);
    // composite key
    assert_eq!(events[6]["id"], json!({"a": 1, "b": "x"}));
    assert_eq!(events[7]["diff"], json!({"v": "v2"}));
    assert_eq!(events[8]["id"], json!({"a": 1, "b": "x"}));
    // no primary key, REPLICA IDENTITY FULL: id null, full old row, exact diff
    assert_eq!(events[9]["id"], Value::Null);
    assert_eq!(events[10]["old"], json!({"x": 1, "y": "a"}));
    assert_eq!(events[10]["diff"], json!({"y": "b"}));
    assert_eq!(events[11]["old"], json!({"x": 1, "y": "b"}));
    // REPLICA IDENTITY FULL and an unchanged TOASTed value: filled from the old row
    let full = &events[13];
    assert_eq!(full["diff"], json!({"small": 2}));
    assert_eq!(full["new"]["big"], full["old"]["big"]);
    assert_eq!(full["new"]["big"].as_str().unwrap().len(), 9600);
}

#[test]
fn context_and_truncate() {
    let events = parsed(&events(Plugin::PgOutput, ValueOptions::default()));
    let with_context = &events[14];
    assert_eq!(with_context["context"], json!({"uid": 42, "label": "signup"}));
    assert!(events[13].get("context").is_none());
    let truncates: Vec<&Value> = events.iter().filter(|e| e["action"] == "T").collect();
    assert_eq!(truncates.len(), 2, "one event per truncated table");
    assert_eq!(truncates[0]["table_name"], "public.fx_composite");
    assert_eq!(truncates[1]["table_name"], "public.fx_nopk");
    assert_eq!(truncates[1]["seq"], 1);
    assert_eq!(truncates[0]["lsn"], truncates[1]["lsn"]);
    for e in &events {
        assert!(e["commit_time"].as_str().unwrap().ends_with('Z'));
        assert_eq!(e["commit_time"].as_str().unwrap().len(), 27);
    }
}

#[test]
fn unknown_types_are_asked_for() {
    let mut decoder = Decoder::new(Plugin::PgOutput, ValueOptions::default());
    let mut catalog = Catalog::default();
    let mut asked = Vec::new();
    for message in messages("pgoutput") {
        loop {
            match decoder.decode(&message, &catalog) {
                Err(DecodeError::NeedCatalog(need)) => {
                    match &need {
                        CatalogNeed::PrimaryKey(t) => catalog.insert_primary_key(t, primary_key(t)),
                        CatalogNeed::Type(_) => {
                            let mut full = self::catalog();
                            std::mem::swap(&mut full, &mut catalog);
                        }
                    }
                    asked.push(need);
                }
                other => {
                    other.unwrap();
                    break;
                }
            }
        }
    }
    assert!(asked.iter().any(|n| matches!(n, CatalogNeed::Type(_))));
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    let catalog = catalog();
    for plugin in [Plugin::PgOutput, Plugin::Wal2Json] {
        let mut decoder = Decoder::new(plugin, ValueOptions::default());
        for bad in [
            &b""[..],
            b"B",
            b"I\0\0\0\x01N",
            b"Zzz",
            b"{\"action\":\"I\"}",
            b"\xff\xfe",
            b"{\"action\":\"B\",\"xid\":1}",
        ] {
            assert!(decoder.decode(bad, &catalog).is_err(), "{plugin:?} accepted {bad:?}");
        }
    }
}
