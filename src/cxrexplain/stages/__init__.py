"""One thin module per DVC stage: read the config, call the library, write outputs atomically, report."""
