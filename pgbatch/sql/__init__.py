"""The schema (migrations/) and every runtime statement (queries/), loaded by name."""
