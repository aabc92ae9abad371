raise SystemExit("the entry point must not run for a broken tree")
