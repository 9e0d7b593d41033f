"""Interoperability test campaigns: certification-style suites against a VTN or a VEN under test."""
