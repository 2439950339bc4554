// A Go HTTPS server (net/http, HTTP/1.1 and Go's built-in HTTP/2 by ALPN) for the tracer's tests:
// GET /hello answers a fixed text, POST /echo answers the request body. Prints "ready" once listening.
package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
)

const hello = "hello from go\n"

func main() {
	port := flag.Int("port", 0, "TCP port on 127.0.0.1")
	cert := flag.String("cert", "", "certificate PEM file")
	key := flag.String("key", "", "private key PEM file")
	flag.Parse()
	mux := http.NewServeMux()
	mux.HandleFunc("/hello", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("X-Proto", r.Proto)
		io.WriteString(w, hello)
	})
	mux.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Write(body)
	})
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", *port))
	if err != nil {
		fmt.Fprintln(os.Stderr, "listen:", err)
		os.Exit(1)
	}
	fmt.Println("ready")
	srv := &http.Server{Handler: mux}
	if err := srv.ServeTLS(ln, *cert, *key); err != nil {
		fmt.Fprintln(os.Stderr, "serve:", err)
		os.Exit(1)
	}
}
