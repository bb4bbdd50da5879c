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
