// A grpc-go server and client over TLS, one binary: `grpc_peer server --port P --cert C --key K` prints
// "ready" and serves apptrace.Echo; `grpc_peer client [--ua UA] HOST:PORT` makes four calls on one
// connection (unary, a failing unary, server-streaming, client-streaming), prints what came back and "done".
// No generated protobuf code: the service is a hand-written grpc.ServiceDesc and the messages are raw bytes
// (a codec registered under grpc's default name "proto", so the wire says plain application/grpc).
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/status"
)

type rawCodec struct{}

func (rawCodec) Name() string { return "proto" }

func (rawCodec) Marshal(v interface{}) ([]byte, error) {
	switch m := v.(type) {
	case []byte:
		return m, nil
	case *[]byte:
		return *m, nil
	}
	return nil, fmt.Errorf("raw codec: cannot marshal %T", v)
}

func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	m, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("raw codec: cannot unmarshal into %T", v)
	}
	*m = append([]byte(nil), data...)
	return nil
}

// echoService is the (empty) interface RegisterService checks the implementation against.
type echoService interface{}

type echo struct{}

func unary(_ interface{}, ctx context.Context, dec func(interface{}) error, _ grpc.UnaryServerInterceptor) (interface{}, error) {
	var in []byte
	if err := dec(&in); err != nil {
		return nil, err
	}
	time.Sleep(50 * time.Millisecond) // a latency the test can tell from zero
	return []byte("echo:" + string(in)), nil
}

func fail(_ interface{}, ctx context.Context, dec func(interface{}) error, _ grpc.UnaryServerInterceptor) (interface{}, error) {
	var in []byte
	if err := dec(&in); err != nil {
		return nil, err
	}
	return nil, status.Error(codes.NotFound, "no such thing")
}

func serverStream(_ interface{}, stream grpc.ServerStream) error {
	var in []byte
	if err := stream.RecvMsg(&in); err != nil {
		return err
	}
	for i := 0; i < 3; i++ {
		if err := stream.SendMsg([]byte(fmt.Sprintf("item %d", i))); err != nil {
			return err
		}
	}
	return nil
}

func clientStream(_ interface{}, stream grpc.ServerStream) error {
	var parts []string
	for {
		var in []byte
		err := stream.RecvMsg(&in)
		if errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return err
		}
		parts = append(parts, string(in))
	}
	return stream.SendMsg([]byte(strings.Join(parts, "+")))
}

var echoDesc = grpc.ServiceDesc{
	ServiceName: "apptrace.Echo",
	HandlerType: (*echoService)(nil),
	Methods: []grpc.MethodDesc{
		{MethodName: "Unary", Handler: unary},
		{MethodName: "Fail", Handler: fail},
	},
	Streams: []grpc.StreamDesc{
		{StreamName: "Stream", Handler: serverStream, ServerStreams: true},
		{StreamName: "Collect", Handler: clientStream, ClientStreams: true},
	},
}

func die(what string, err error) {
	fmt.Fprintln(os.Stderr, what+":", err)
	os.Exit(1)
}

func serve(args []string) {
	var port, certFile, keyFile string
	for i := 0; i+1 < len(args); i += 2 {
		switch args[i] {
		case "--port":
			port = args[i+1]
		case "--cert":
			certFile = args[i+1]
		case "--key":
			keyFile = args[i+1]
		}
	}
	creds, err := credentials.NewServerTLSFromFile(certFile, keyFile)
	if err != nil {
		die("tls", err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:"+port)
	if err != nil {
		die("listen", err)
	}
	server := grpc.NewServer(grpc.Creds(creds))
	server.RegisterService(&echoDesc, echo{})
	fmt.Println("ready")
	if err := server.Serve(lis); err != nil {
		die("serve", err)
	}
}

func call(args []string) {
	ua := "apptrace-go"
	if len(args) >= 2 && args[0] == "--ua" {
		ua, args = args[1], args[2:]
	}
	if len(args) != 1 {
		die("usage", errors.New("grpc_peer client [--ua UA] HOST:PORT"))
	}
	creds := credentials.NewTLS(&tls.Config{InsecureSkipVerify: true})
	conn, err := grpc.Dial(args[0], grpc.WithTransportCredentials(creds), grpc.WithUserAgent(ua), grpc.WithBlock())
	if err != nil {
		die("dial", err)
	}
	defer conn.Close()
	ctx := context.Background()

	var out []byte
	if err := conn.Invoke(ctx, "/apptrace.Echo/Unary", []byte("ping"), &out); err != nil {
		die("unary", err)
	}
	fmt.Println("unary", string(out))

	err = conn.Invoke(ctx, "/apptrace.Echo/Fail", []byte("x"), &out)
	fmt.Println("fail", status.Code(err), status.Convert(err).Message())

	stream, err := conn.NewStream(ctx, &echoDesc.Streams[0], "/apptrace.Echo/Stream")
	if err != nil {
		die("stream", err)
	}
	if err := stream.SendMsg([]byte("go")); err != nil {
		die("stream send", err)
	}
	if err := stream.CloseSend(); err != nil {
		die("stream close", err)
	}
	var items []string
	for {
		var item []byte
		err := stream.RecvMsg(&item)
		if errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			die("stream recv", err)
		}
		items = append(items, string(item))
	}
	fmt.Println("stream", strings.Join(items, ","))

	collect, err := conn.NewStream(ctx, &echoDesc.Streams[1], "/apptrace.Echo/Collect")
	if err != nil {
		die("collect", err)
	}
	for _, part := range []string{"a", "bb", "ccc"} {
		if err := collect.SendMsg([]byte(part)); err != nil {
			die("collect send", err)
		}
	}
	if err := collect.CloseSend(); err != nil {
		die("collect close", err)
	}
	if err := collect.RecvMsg(&out); err != nil {
		die("collect recv", err)
	}
	// the server's status arrives after its one message: read to the end so the call completes
	if err := collect.RecvMsg(new([]byte)); !errors.Is(err, io.EOF) {
		die("collect end", err)
	}
	fmt.Println("collect", string(out))
	fmt.Println("done")
}

func main() {
	encoding.RegisterCodec(rawCodec{})
	if len(os.Args) >= 2 && os.Args[1] == "server" {
		serve(os.Args[2:])
	} else if len(os.Args) >= 2 && os.Args[1] == "client" {
		call(os.Args[2:])
	} else {
		die("usage", errors.New("grpc_peer server --port P --cert C --key K | grpc_peer client [--ua UA] HOST:PORT"))
	}
}
