package plugins

// The privilege lint (Factory.PrivilegedClauses) reads statements through
// each engine's own lexer; the tokens it yields, the split into statements
// and the walk over a role's creation statements are the same for every
// engine and live here.

// TokenKind is the kind of a Token.
type TokenKind int

// The kinds of tokens an engine's lexer yields.
const (
	TokWord        TokenKind = iota // keyword or unquoted identifier, upper-cased
	TokQuotedIdent                  // a quoted identifier: Text is the identifier, exact
	TokString                       // a string literal (Text as the engine's lexer keeps it)
	TokPlaceholder                  // {{name}} and the like
	TokPunct                        // any other byte, one per token
)

// Token is one lexical token of a statement.
type Token struct {
	Kind TokenKind
	Text string
}

// SplitStatements splits toks at top-level semicolons, dropping empty
// statements.
func SplitStatements(toks []Token) [][]Token {
	var out [][]Token
	start := 0
	for i, t := range toks {
		if t.Kind == TokPunct && t.Text == ";" {
			if i > start {
				out = append(out, toks[start:i])
			}
			start = i + 1
		}
	}
	if start < len(toks) {
		out = append(out, toks[start:])
	}
	return out
}

// LintStatements is the body of a Factory.PrivilegedClauses: every
// statement of every creation statement, read by the engine's lex, given
// to privileged, which names what the statement's first privileged clause
// does ("" for none).
func LintStatements(creation []string, lex func(string) []Token, privileged func([]Token) string) []PrivilegedClause {
	var out []PrivilegedClause
	for i, s := range creation {
		for _, stmt := range SplitStatements(lex(s)) {
			if what := privileged(stmt); what != "" {
				out = append(out, PrivilegedClause{Statement: i + 1, What: what})
			}
		}
	}
	return out
}
