//! `runner init`: a pipeline inferred from a sample validates, and its generator's records
//! decode and pass the checks of the schema it inferred.

mod common;

use runner::event::Record;
use std::io::Write;

#[test]
fn init_from_file_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let sample = dir.path().join("sample.jsonl");
    let mut f = std::fs::File::create(&sample).unwrap();
    for i in 0..300 {
        let coupon = if i % 4 == 0 {
            r#","coupon":"SAVE10""#
        } else {
            ""
        };
        writeln!(
            f,
            r#"{{"order_id":"{}","customer":"cust-{}","status":"{}","amount":{:.2},"quantity":{},"paid":{},"created_at":"2026-11-30T10:{:02}:{:02}Z","lines":[{{"sku":"a"}}]{coupon}}}"#,
            uuid::Uuid::new_v4(),
            1 + (i * 7919) % 120,
            ["new", "paid", "shipped"][i % 3],
            5.0 + (i as f64 * 1.37) % 200.0,
            1 + i % 5,
            i % 3 != 0,
            i / 60,
            i % 60
        )
        .unwrap();
    }
    writeln!(f, "not json").unwrap();
    drop(f);

    let out = common::runner()
        .args(["init", "orders", "--from-file"])
        .arg(&sample)
        .arg("--dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("learned from 300 records")
            && text.contains("id = \"order_id\"")
            && text.contains("time = \"created_at\""),
        "{text}"
    );
    let pipeline = dir.path().join("orders.toml");
    let toml = std::fs::read_to_string(&pipeline).unwrap();
    for line in [
        "amount = \"float\"",
        "quantity = \"int\"",
        "paid = \"bool\"",
        "coupon = \"string?\"",
        "key = \"customer\"",
        "# lines: objects, lists",
    ] {
        assert!(toml.contains(line), "{line} in\n{toml}");
    }

    let validate = common::runner()
        .arg("validate")
        .arg(&pipeline)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&validate.stdout).trim(),
        "ok",
        "{}",
        String::from_utf8_lossy(&validate.stderr)
    );

    // The generator's records decode under the inferred schema and keep its checks.
    let generated = common::runner()
        .args(["generate", "-n", "500"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert!(
        generated.status.success(),
        "{}",
        String::from_utf8_lossy(&generated.stderr)
    );
    let p = runner::config::Pipeline::load_with_env(&pipeline, |_| None).unwrap();
    let schema = p.schema();
    let lines: Vec<&[u8]> = generated
        .stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(lines.len(), 500);
    let mut statuses = std::collections::HashSet::new();
    let (mut coupons, mut paid) = (0, 0);
    for line in lines {
        let r = Record::from_json(&schema, line).unwrap();
        r.check()
            .unwrap_or_else(|e| panic!("{e:?}: {}", String::from_utf8_lossy(line)));
        statuses.insert(r.field("status").unwrap().as_text().unwrap().into_owned());
        let v: serde_json::Value = serde_json::from_slice(line).unwrap();
        coupons += v.get("coupon").is_some() as usize;
        paid += (v["paid"] == serde_json::json!(true)) as usize;
        let q = v["quantity"].as_i64().unwrap();
        assert!(
            (1..=5).contains(&q),
            "quantity within the sample's range: {v}"
        );
    }
    assert_eq!(
        statuses.len(),
        3,
        "the generator draws the sample's statuses: {statuses:?}"
    );
    // The sample had a coupon in a quarter of its records and paid = true in two thirds.
    assert!(
        (75..=175).contains(&coupons),
        "the optional coupon in about its share of 500 records, got {coupons}"
    );
    assert!(
        (270..=400).contains(&paid),
        "paid true in about two thirds of 500 records, got {paid}"
    );
    let generator = std::fs::read_to_string(dir.path().join("orders/generator.rhai")).unwrap();
    assert!(
        generator.contains("paid: chance(0.667)") && generator.contains(".optional(0.250)"),
        "{generator}"
    );
    assert!(
        toml.contains("[dashboard]")
            && toml.contains("What to edit next")
            && !toml.contains("\n[kafka]"),
        "{toml}"
    );

    // Written files are not overwritten without --force.
    let again = common::runner()
        .args(["init", "orders", "--from-file"])
        .arg(&sample)
        .arg("--dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("--force"));
}
