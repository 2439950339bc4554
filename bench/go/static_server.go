// A Go HTTPS server for bench/bench_overhead.py --server go: net/http serving a docroot, HTTP/2 by ALPN
// (Go's built-in h2), so h2load asks it for the same page it asks nghttpd for. Prints "ready" once listening.
package main

import (
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
)

func main() {
	port := flag.Int("port", 0, "TCP port on 127.0.0.1")
	cert := flag.String("cert", "", "certificate PEM file")
	key := flag.String("key", "", "private key PEM file")
	docroot := flag.String("docroot", ".", "directory served at /")
	flag.Parse()
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", *port))
	if err != nil {
		fmt.Fprintln(os.Stderr, "listen:", err)
		os.Exit(1)
	}
	fmt.Println("ready")
	srv := &http.Server{Handler: http.FileServer(http.Dir(*docroot))}
	if err := srv.ServeTLS(ln, *cert, *key); err != nil {
		fmt.Fprintln(os.Stderr, "serve:", err)
		os.Exit(1)
	}
}
