package postgres

import (
	"errors"
	"strings"

	"github.com/jackc/pgx/v5"
)

// quoteIdent quotes an identifier. Names reaching it already match
// UsernamePattern; quoting anyway keeps SQL building uniform.
func quoteIdent(s string) string { return pgx.Identifier{s}.Sanitize() }

// quoteLiteral quotes a string literal the way libpq's PQescapeLiteral does:
// quotes doubled and, when a backslash is present, an E” literal with
// doubled backslashes, which reads the same whatever
// standard_conforming_strings is. PostgreSQL text cannot hold NUL, and
// dropping it silently would change the value, so it is refused.
func quoteLiteral(s string) (string, error) {
	if strings.ContainsRune(s, 0) {
		return "", errors.New("literal contains a NUL byte")
	}
	q := "'" + strings.ReplaceAll(s, "'", "''") + "'"
	if strings.Contains(s, `\`) {
		q = " E" + strings.ReplaceAll(q, `\`, `\\`)
	}
	return q, nil
}
