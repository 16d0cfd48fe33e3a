"""Subprocess targets and shared helpers for the reliability and security tests."""
