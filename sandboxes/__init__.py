"""Isolated code execution (the SandboxService). Built in the sandbox issue."""
