"""The test bed node agent: runs pods bound to its node as local processes."""
