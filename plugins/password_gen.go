package plugins

// PasswordGenerator is an optional ability of a Database: it generates the
// passwords of its new users itself, as GeneratePassword would (same
// alphabet and length), so that it can prepare what it derives from one
// (the postgres plugin keeps SCRAM verifiers of passwords it has not
// handed out yet, computed off the request path). NewUser must accept any
// password all the same, including one from GeneratePassword.
type PasswordGenerator interface {
	GeneratePassword() (string, error)
}

// NewPassword returns a password for a new user of db: from db if it (or
// the plugin it wraps, see Sanitized) is a PasswordGenerator, else from
// GeneratePassword.
func NewPassword(db Database) (string, error) {
	for db != nil {
		if g, ok := db.(PasswordGenerator); ok {
			return g.GeneratePassword()
		}
		u, ok := db.(interface{ Unwrap() Database })
		if !ok {
			break
		}
		db = u.Unwrap()
	}
	return GeneratePassword()
}
