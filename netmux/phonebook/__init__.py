"""phonebookd: every running workload in DNS, gone when it stops."""
