//! Servers of several tables: each table has its own routes, metadata,
//! queue and metrics, and the client reads the one it names.

mod common;

use common::{padded, spawn};

use morphogen_client::{Client, Settings, fetch_catalog};
use morphogen_protocol::{Catalog, ErrorBody};
use morphogen_scan::CpuEngine;
use morphogen_server::{Config, ServedTable, Server, TableInfo};
use morphogen_table::{BuildOptions, NoProgress, Table, build};
use tokio::sync::oneshot;

/// A table of `key-i` → `{prefix}-i` for i below `n`, with `page_size` pages.
fn table(prefix: &str, n: usize, page_size: u32) -> Table {
    let records: Vec<(Vec<u8>, Vec<u8>)> =
        (0..n).map(|i| (format!("key-{i}").into_bytes(), format!("{prefix}-{i}").into_bytes())).collect();
    let options = BuildOptions { page_size, value_size: Some(16), choices: 2, ..Default::default() };
    build(&records[..], &options, &NoProgress).unwrap()
}

fn served(name: &str, table: &Table) -> ServedTable {
    ServedTable::new(name, TableInfo::of(table), Box::new(CpuEngine::new(table.clone())))
}

/// A server of the tables `fruit` and `veg`, which hold the same keys with
/// different values.
async fn start(fruit: &Table, veg: &Table) -> (String, oneshot::Sender<()>) {
    let mut about = serde_json::Map::new();
    about.insert("chain_id".to_string(), serde_json::json!(7));
    let config = Config { about, admin_token: Some("a secret admin token".to_string()), ..Config::default() };
    spawn(Server::new(vec![served("veg", veg), served("fruit", fruit)], config).unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_table_is_read_through_its_own_routes() {
    let (fruit, veg) = (table("fruit", 300, 512), table("veg", 1_000, 1024));
    let (a, _stop_a) = start(&fruit, &veg).await;
    let (b, _stop_b) = start(&fruit, &veg).await;

    let catalog = fetch_catalog(&a, &Settings::default()).await.unwrap();
    let mut about = serde_json::Map::new();
    about.insert("chain_id".to_string(), serde_json::json!(7));
    assert_eq!(catalog, Catalog { tables: vec!["fruit".to_string(), "veg".to_string()], about });

    let settings = Settings::default();
    let fruits = Client::for_table(&a, &b, "fruit", &settings).await.unwrap();
    let vegs = Client::for_table(&a, &b, "veg", &settings).await.unwrap();
    assert_eq!((fruits.meta().records, vegs.meta().records), (300, 1_000));
    assert_eq!((fruits.meta().page_size, vegs.meta().page_size), (512, 1024));
    assert_eq!(fruits.get(b"key-42").await.unwrap(), Some(padded("fruit-42")));
    assert_eq!(vegs.get(b"key-42").await.unwrap(), Some(padded("veg-42")));
    assert_eq!(vegs.get(b"key-999").await.unwrap(), Some(padded("veg-999")));
    assert_eq!(fruits.get(b"key-999").await.unwrap(), None);

    // Unknown tables and the unnamed routes of a server of several.
    let error = Client::for_table(&a, &b, "nuts", &settings).await.unwrap_err();
    assert!(error.to_string().contains("404"), "{error}");
    let error = Client::for_table(&a, &b, "../v1", &settings).await.unwrap_err();
    assert!(error.to_string().contains("names no table"), "{error}");
    let error = Client::new(&a, &b).await.unwrap_err();
    assert!(error.to_string().contains("table_not_named"), "{error}");
    let http = reqwest::Client::new();
    for (method, path) in [("GET", "/v1/meta"), ("POST", "/v1/query"), ("GET", "/admin/v1/status")] {
        let request =
            http.request(method.parse().unwrap(), format!("{a}{path}")).bearer_auth("a secret admin token");
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 404, "{path}");
        let body: ErrorBody = response.json().await.unwrap();
        assert_eq!(body.code, "table_not_named", "{path}");
    }
    // Each table has its own admin routes.
    let status = http
        .get(format!("{a}/admin/v1/tables/veg/status"))
        .bearer_auth("a secret admin token")
        .send()
        .await
        .unwrap();
    assert_eq!(status.status().as_u16(), 200);
    let status: morphogen_protocol::AdminStatus = status.json().await.unwrap();
    assert_eq!(status.meta.records, 1_000);

    // Metrics are labelled by table.
    let metrics = http.get(format!("{a}/metrics")).send().await.unwrap().text().await.unwrap();
    for table in ["fruit", "veg"] {
        let line = format!("morphogen_requests_total{{table=\"{table}\",outcome=\"ok\"}}");
        assert!(metrics.contains(&line), "{line}\n{metrics}");
    }
}

#[tokio::test]
async fn tables_must_have_distinct_usable_names() {
    let fruit = table("fruit", 10, 512);
    let cases: [(&[&str], &str); 4] = [
        (&[], "at least one table"),
        (&["fruit", "fruit"], "two tables are named"),
        (&["Fruit"], "cannot name a table"),
        (&["a/b"], "cannot name a table"),
    ];
    for (names, message) in cases {
        let tables = names.iter().map(|name| served(name, &fruit)).collect();
        let error = Server::new(tables, Config::default()).err().expect("refused");
        assert!(error.to_string().contains(message), "{names:?}: {error}");
    }
}
