//! Helpers for balancer's end-to-end tests: namespaces, cgroups, processes.
