package postgres

import (
	"strings"

	"github.com/credbroker/credbroker/plugins"
)

// endsAtTopLevel reports whether PostgreSQL's lexer, reading sql, ends
// outside any string, quoted identifier, dollar quote or comment, so that
// text appended after a newline starts a new token of its own. NewUser
// sends a template and its own statements in one simple query
// (pipeline.go) only when every rendered statement passes: a template with
// an unterminated quote or comment must not swallow the plugin's VALID UNTIL
// and marker. It is conservative: anything it does not model with
// certainty (a backslash in a string that is not E'…', whose meaning
// depends on standard_conforming_strings) counts as not at top level, and
// NewUser then sends one statement per round trip, as before.
func endsAtTopLevel(sql string) bool {
	n := len(sql)
	for i := 0; i < n; {
		c := sql[i]
		switch {
		case c == '-' && i+1 < n && sql[i+1] == '-':
			j := strings.IndexByte(sql[i:], '\n')
			if j < 0 {
				return false
			}
			i += j + 1
		case c == '/' && i+1 < n && sql[i+1] == '*':
			depth := 1
			i += 2
			for depth > 0 {
				if i+1 >= n {
					return false
				}
				switch {
				case sql[i] == '/' && sql[i+1] == '*':
					depth++
					i += 2
				case sql[i] == '*' && sql[i+1] == '/':
					depth--
					i += 2
				default:
					i++
				}
			}
		case c == '\'':
			escapes := i > 0 && (sql[i-1] == 'E' || sql[i-1] == 'e') && (i == 1 || !identChar(sql[i-2]))
			j, ok := skipQuoted(sql, i+1, '\'', escapes)
			if !ok {
				return false
			}
			i = j
		case c == '"':
			j, ok := skipQuoted(sql, i+1, '"', false)
			if !ok {
				return false
			}
			i = j
		case c == '$' && (i == 0 || !identChar(sql[i-1])):
			// $tag$ … $tag$; $1 (a parameter) is not a dollar quote.
			j := i + 1
			for j < n && identChar(sql[j]) && !(j == i+1 && isDigit(sql[j])) {
				j++
			}
			if j >= n || sql[j] != '$' {
				i = j
				continue
			}
			tag := sql[i : j+1]
			k := strings.Index(sql[j+1:], tag)
			if k < 0 {
				return false
			}
			i = j + 1 + k + len(tag)
		case identChar(c):
			// Skip the whole word, so that a '$' inside an identifier
			// (a$b) is not mistaken for a dollar quote.
			for i < n && (identChar(sql[i]) || sql[i] == '$') {
				i++
			}
		default:
			i++
		}
	}
	return true
}

// skipQuoted returns the index just past the closing quote of a token that
// started before i, or false if it is unterminated or ambiguous.
func skipQuoted(sql string, i int, q byte, escapes bool) (int, bool) {
	for i < len(sql) {
		switch c := sql[i]; {
		case c == '\\':
			if !escapes && q == '\'' {
				return 0, false
			}
			if escapes {
				i += 2
				continue
			}
			i++
		case c == q:
			if i+1 < len(sql) && sql[i+1] == q {
				i += 2
				continue
			}
			return i + 1, true
		default:
			i++
		}
	}
	return 0, false
}

func identChar(c byte) bool {
	return c == '_' || c >= 0x80 || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || isDigit(c)
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// tokenKind classifies the tokens of a statement for the privilege lint.
// The lint's tokens (plugins.Token). Words are upper-cased; a quoted
// identifier ("…") is exact; a string ('…', E'…', $tag$…$tag$) keeps no
// text.
type token = plugins.Token

const (
	tokWord        = plugins.TokWord
	tokQuotedIdent = plugins.TokQuotedIdent
	tokString      = plugins.TokString
	tokPlaceholder = plugins.TokPlaceholder
	tokPunct       = plugins.TokPunct
)

// tokens splits sql into tokens as PostgreSQL's lexer would, dropping
// comments and whitespace, so that a keyword inside a string literal, a
// quoted identifier or a comment is never read as one. Strings are read
// with standard_conforming_strings on (a backslash is literal except in
// E'…'). An unterminated quote, dollar quote or comment runs to the end.
func tokens(sql string) []token {
	var out []token
	n := len(sql)
	for i := 0; i < n; {
		c := sql[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
			i++
		case c == '-' && i+1 < n && sql[i+1] == '-':
			j := strings.IndexByte(sql[i:], '\n')
			if j < 0 {
				return out
			}
			i += j + 1
		case c == '/' && i+1 < n && sql[i+1] == '*':
			depth := 1
			i += 2
			for depth > 0 && i < n {
				switch {
				case i+1 < n && sql[i] == '/' && sql[i+1] == '*':
					depth++
					i += 2
				case i+1 < n && sql[i] == '*' && sql[i+1] == '/':
					depth--
					i += 2
				default:
					i++
				}
			}
		case c == '{' && strings.HasPrefix(sql[i:], "{{"):
			j := strings.Index(sql[i:], "}}")
			if j < 0 {
				j = n - i - 2
			}
			out = append(out, token{Kind: tokPlaceholder, Text: sql[i : i+j+2]})
			i += j + 2
		case c == '\'':
			escapes := len(out) > 0 && out[len(out)-1].Kind == tokWord && out[len(out)-1].Text == "E" && i > 0 && (sql[i-1] == 'E' || sql[i-1] == 'e')
			if escapes {
				out = out[:len(out)-1]
			}
			i, _ = quotedEnd(sql, i+1, '\'', escapes)
			out = append(out, token{Kind: tokString})
		case c == '"':
			j, ok := quotedEnd(sql, i+1, '"', false)
			body := sql[i+1:]
			if ok {
				body = sql[i+1 : j-1]
			}
			out = append(out, token{Kind: tokQuotedIdent, Text: strings.ReplaceAll(body, `""`, `"`)})
			i = j
		case c == '$' && i+1 < n && (sql[i+1] == '$' || identChar(sql[i+1]) && !isDigit(sql[i+1])):
			j := i + 1
			for j < n && identChar(sql[j]) {
				j++
			}
			if j >= n || sql[j] != '$' {
				out = append(out, token{Kind: tokPunct, Text: "$"})
				i++
				continue
			}
			tag := sql[i : j+1]
			k := strings.Index(sql[j+1:], tag)
			if k < 0 {
				i = n
			} else {
				i = j + 1 + k + len(tag)
			}
			out = append(out, token{Kind: tokString})
		case identChar(c):
			j := i
			for j < n && (identChar(sql[j]) || sql[j] == '$') {
				j++
			}
			out = append(out, token{Kind: tokWord, Text: strings.ToUpper(sql[i:j])})
			i = j
		default:
			out = append(out, token{Kind: tokPunct, Text: sql[i : i+1]})
			i++
		}
	}
	return out
}

// quotedEnd returns the index just past the quote closing a token whose
// body starts at i (a doubled quote is part of the body), or len(sql) and
// false if it is unterminated.
func quotedEnd(sql string, i int, q byte, escapes bool) (int, bool) {
	for i < len(sql) {
		switch sql[i] {
		case '\\':
			if escapes {
				i += 2
				continue
			}
			i++
		case q:
			if i+1 < len(sql) && sql[i+1] == q {
				i += 2
				continue
			}
			return i + 1, true
		default:
			i++
		}
	}
	return len(sql), false
}
