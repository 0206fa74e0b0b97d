"""The experiment harness, kept apart from the library: throughput benchmark, quality
comparison of configs × seeds, HTTP load test. The library never imports it."""
