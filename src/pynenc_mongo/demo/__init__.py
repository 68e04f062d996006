"""The demo workload (``scripts/demo``): a realistic pynenc run on MongoStateBackend."""
