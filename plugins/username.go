package plugins

import "strings"

// SanitizeRole turns a role name into the middle part of a generated
// username: it keeps [a-z0-9], turns every other run of characters into one
// underscore, trims underscores at both ends and shortens the result to max
// bytes. An empty result becomes "role" (or its first max characters) so the
// name layout stays parseable. Plugins shorten only this part to fit their
// length limits, never the random part that makes a name unique.
func SanitizeRole(role string, max int) string {
	var sb strings.Builder
	underscore := false
	for _, r := range strings.ToLower(role) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			sb.WriteRune(r)
			underscore = false
			continue
		}
		if !underscore {
			sb.WriteByte('_')
			underscore = true
		}
	}
	s := strings.Trim(sb.String(), "_")
	if len(s) > max {
		s = strings.TrimRight(s[:max], "_")
	}
	if s == "" {
		s = "role"[:min(4, max)]
	}
	return s
}
