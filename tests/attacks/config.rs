//! Bad configuration and store files: nothing a config or a concurrent CLI run does may panic the gateway or leak a key hash.
