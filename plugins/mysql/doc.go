// Package mysql is the MySQL and MariaDB plugin: it implements
// plugins.Database on go-sql-driver/mysql with a database/sql pool. It is
// tested against MariaDB; MySQL 8 differs only where noted. Factory is its
// entry in plugins.Catalog (type "mysql", own config key user_host; the
// broker's sslmode is mapped to the driver's tls setting).
//
// # Creating a user
//
// NewUser renders the role's creation statements, for example
//
//	CREATE USER {{name}} IDENTIFIED BY PASSWORD {{password}}
//	GRANT SELECT ON shop.orders TO {{name}}
//
// and runs them one by one on one connection. {{name}} is the whole
// account, 'cb_orders_readonly_k2…'@'%': the name is generated, the host part
// is the configured user_host (default '%'), and the plugin quotes both;
// templates never concatenate either.
//
// MySQL and MariaDB have no transactional DDL: CREATE USER and every GRANT
// commit on their own. When a statement fails, NewUser drops whatever
// exists of the user (the full DeleteUser sequence) before it returns, and
// marks its error plugins.ErrNotCreated only when that drop succeeded and
// the failing statement's outcome is known (the server answered it). After
// a connection lost mid-statement or a cancelled call the server may still
// complete the statement, so the error is left unmarked and the broker keeps
// revoking the user until the server confirms it is gone. A statement the
// server rolls back as a deadlock victim is sent again (up to 5 times)
// before it counts as failed.
//
// # Why a hash and not the password
//
// {{password}} is not the password but the quoted mysql_native_password hash
// of it ('*' and the upper-case hex of SHA1(SHA1(password))), which the
// server stores as is. The plaintext never travels to the server, so it is
// not in the general or slow query log, the binary log, or the process list
// (MariaDB writes IDENTIFIED BY 'plaintext' to its general log verbatim).
// The user logs in with the plaintext as usual. Hence {{password}} may only
// stand where the server expects a hash:
//
//	IDENTIFIED BY PASSWORD {{password}}                        MariaDB (default template)
//	IDENTIFIED WITH mysql_native_password AS {{password}}      MySQL 8, MariaDB
//	IDENTIFIED VIA mysql_native_password USING {{password}}    MariaDB
//	SET PASSWORD FOR {{name}} = {{password}}                   MariaDB
//
// Anything else is refused with plugins.ErrInvalidStatement before a
// statement is sent (Factory.CheckStatements lets the broker refuse it at
// load).
// The flavour comes from SELECT VERSION(). MySQL 8.4 disables the
// mysql_native_password plugin by default and 9.0 removes it; there the
// plugin cannot create users without sending the plaintext, which it does
// not do.
//
// # No server-side expiry
//
// Neither server can make an account stop working at a point in time
// (PostgreSQL's VALID UNTIL); Capabilities reports ServerExpiry false (the
// broker logs a warning at startup for such a database) and UpdateUser does
// nothing. The broker's expiry loop is the only thing that
// ends a user here: if the broker is down past a lease's expiry, the user
// keeps working until the broker is back and revokes it. The broker's crash
// safety still holds (the lease's intent is durable before CREATE USER, and
// reconciliation on start revokes what an interrupted issuance left).
// {{expiration}} is available as a quoted UTC DATETIME literal for
// templates that record it somewhere.
//
// # Names and the marker
//
// Names are <prefix>_<role>_<random> (plugins.Usernames), where random is
// 16 to 26 base32 characters from crypto/rand. The server's own limit on user names is read
// from information_schema at first contact (MySQL 32, MariaDB 80 or 128);
// before that, names are made to fit 32. Only the role part is ever
// shortened, so two leases can never share a user.
//
// Neither MariaDB nor MySQL before 8.0.21 can put a comment on a user, so
// the marker (PostgreSQL: the role's comment) is a role: NewUser creates a
// role named after the marker once (CREATE ROLE IF NOT EXISTS; it holds no
// privilege) and, after the template, grants it to the user. ListUsers
// returns the users that hold it and match the name pattern, so brokers
// with different markers (instance_id) can share a server and a prefix
// without taking each other's users for orphans. A user that failed half
// way may lack the marker: NewUser itself drops it, or the broker's lease
// record does. Every method refuses a name outside the pattern before a
// statement is sent.
//
// # Deleting a user
//
// DeleteUser is idempotent (an absent user is success) and works on every
// account with the name, whatever its host part: ALTER USER … ACCOUNT LOCK;
// kill the user's connections found in information_schema.PROCESSLIST and
// wait until none is listed (DROP USER alone leaves sessions running); the
// lease's revocation statements; DROP USER IF EXISTS; a last sweep of the
// process list. A nil return means no session of the user remains. A
// revocation statement that fails because the grant is already gone (an
// earlier attempt ran it; nothing rolls back) counts as done.
//
// # Privileges of the admin user
//
//   - CREATE USER, to create, lock and drop users (and the marker role;
//     MySQL 8 also wants CREATE ROLE, and ROLE_ADMIN to grant it).
//   - SELECT on mysql.user, to find the user's accounts and list users.
//   - PROCESS, to see other users' connections, and CONNECTION ADMIN
//     (MariaDB 10.5+, MySQL 8) or SUPER, to kill them.
//   - Every privilege the templates grant, WITH GRANT OPTION.
package mysql
