package broker

// CloseAuditLog closes the App's audit writer as a failed disk would leave
// it: every later record fails with audit.ErrUnavailable (fail-closed
// tests).
func (a *App) CloseAuditLog() error {
	return a.audit.w.(interface{ Close() error }).Close()
}
