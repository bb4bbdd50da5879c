use super::*;

/// Eight connections opening a store that does not exist yet, at once (a
/// `gateway run` and a `gateway keys create` started together, say): each
/// gets the store. Before `enable_wal` retried, one of them failed with
/// "database is locked" within a few dozen rounds (at rounds 8, 9 and 39
/// in three runs here).
#[test]
fn concurrent_first_opens_of_a_new_store_all_succeed() {
    for round in 0..60 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        let start = std::sync::Barrier::new(8);
        let errors: Vec<String> = std::thread::scope(|scope| {
            let opens: Vec<_> = (0..8)
                .map(|_| {
                    let (start, path) = (&start, &path);
                    scope.spawn(move || {
                        start.wait();
                        SqliteStore::open(path).err().map(|e| e.to_string())
                    })
                })
                .collect();
            opens
                .into_iter()
                .filter_map(|open| open.join().unwrap())
                .collect()
        });
        assert!(errors.is_empty(), "round {round}: {errors:?}");
        let store = SqliteStore::open(&path).unwrap();
        let mode: String = (store.conn())
            .query_row("PRAGMA journal_mode", [], |row| row.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }
}

/// A full read sees one moment of the file while another process (here a
/// second connection, as the CLI would be) creates and revokes clients:
/// every key it returns has its client, and every client its key.
#[test]
fn a_full_read_is_one_moment_of_the_file() {
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.db");
    let reader = SqliteStore::open(&path).unwrap();
    let writer = SqliteStore::open(&path).unwrap();
    let done = AtomicBool::new(false);
    let start = std::sync::Barrier::new(2);
    let (torn, reads) = std::thread::scope(|scope| {
        scope.spawn(|| {
            start.wait();
            for round in 0..400 {
                let new = NewClient {
                    name: format!("c{round}"),
                    tier: "gold".into(),
                    ..NewClient::default()
                };
                let (client, _) = writer.create(new, 0).unwrap();
                if round % 2 == 0 {
                    writer.delete(&client.id).unwrap();
                }
            }
            done.store(true, Relaxed);
        });
        let (mut torn, mut reads) = (0, 0);
        start.wait();
        while !done.load(Relaxed) {
            reads += 1;
            let (clients, keys) = reader.all().unwrap();
            let ids: std::collections::HashSet<&str> =
                clients.iter().map(|c| c.id.as_str()).collect();
            let keyed: std::collections::HashSet<&str> =
                keys.iter().map(|k| k.client_id.as_str()).collect();
            torn += usize::from(ids != keyed);
        }
        (torn, reads)
    });
    assert!(reads > 1, "the reads did not overlap the writes ({reads})");
    assert_eq!(
        torn, 0,
        "reads saw a client without its key or a key without its client"
    );
}
