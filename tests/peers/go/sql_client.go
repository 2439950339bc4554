// A Go database/sql client over TLS: lib/pq (PostgreSQL) or go-sql-driver/mysql (MariaDB), as Debian packages
// them (GOPATH=/usr/share/gocode). Runs each query given after the DSN without arguments (the drivers' text
// protocols), prints each result's rows or its error, then closes the connection.
package main

import (
	"database/sql"
	"fmt"
	"os"
	"strings"

	_ "github.com/go-sql-driver/mysql"
	_ "github.com/lib/pq"
)

func main() {
	if len(os.Args) < 4 {
		fmt.Fprintln(os.Stderr, "usage: sql_client postgres|mysql DSN QUERY...")
		os.Exit(2)
	}
	db, err := sql.Open(os.Args[1], os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, "open:", err)
		os.Exit(1)
	}
	db.SetMaxOpenConns(1) // one connection: the queries go one after the other on it
	for _, query := range os.Args[3:] {
		rows, err := db.Query(query)
		if err != nil {
			fmt.Println("error:", err)
			continue
		}
		cols, _ := rows.Columns()
		values := make([]sql.RawBytes, len(cols))
		ptrs := make([]any, len(cols))
		for i := range values {
			ptrs[i] = &values[i]
		}
		n := 0
		for rows.Next() {
			rows.Scan(ptrs...)
			parts := make([]string, len(values))
			for i, v := range values {
				parts[i] = string(v)
			}
			fmt.Println(strings.Join(parts, "|"))
			n++
		}
		rows.Close()
		fmt.Println("rows:", n)
	}
	db.Close()
}
