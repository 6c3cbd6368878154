"""Activities: everything with a side effect (email, call tasks, approvals, CRM), each behind a provider."""
