"""Compiler: .pol sources to verified .bin artifacts. Depends on polc.runtime, never the reverse."""
