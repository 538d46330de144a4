// opa-envoy: the OPA-Envoy request path, built from OPA as a library, for the
// side-by-side benchmark (bench/load.ts, set-up 5).
//
// Why not the opa-envoy-plugin binary itself: the Go module proxy this project
// can reach refuses github.com/open-policy-agent/opa-envoy-plugin (HTTP 403 for
// its version list and for a named release), while github.com/open-policy-agent/opa
// and Envoy's go-control-plane protos are served. This program does what the
// plugin's envoy.ext_authz.grpc server does per Check call (internal/internal.go
// and envoyauth/ in that repository):
//
//  1. protojson-marshal the CheckRequest and decode it into a generic map
//     (envoyauth.RequestToInput), adding parsed_path, parsed_query and
//     parsed_body like the plugin does;
//  2. convert it to an AST value (ast.InterfaceToValue) and evaluate a prepared
//     query (default data.envoy.authz.allow) inside a fresh read transaction on
//     the in-memory store, with per-call metrics, as the plugin does;
//  3. map the result (boolean, or an object with allowed/headers/http_status)
//     to a CheckResponse.
//
// Decision logging is off (as in the plugin by default). The policy and data
// (the JWKS) are loaded from files given on the command line.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/metrics"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"github.com/open-policy-agent/opa/v1/util"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protojson"
)

type server struct {
	authv3.UnimplementedAuthorizationServer
	store storage.Store
	query rego.PreparedEvalQuery
}

func requestToInput(req *authv3.CheckRequest) (map[string]interface{}, error) {
	bs, err := protojson.Marshal(req)
	if err != nil {
		return nil, err
	}
	var input map[string]interface{}
	if err := util.UnmarshalJSON(bs, &input); err != nil {
		return nil, err
	}
	http := req.GetAttributes().GetRequest().GetHttp()
	path := http.GetPath()
	parsedPath := []interface{}{}
	parsedQuery := map[string]interface{}{}
	if u, err := url.Parse(path); err == nil {
		for _, s := range strings.Split(strings.TrimLeft(u.Path, "/"), "/") {
			parsedPath = append(parsedPath, s)
		}
		for k, vs := range u.Query() {
			l := make([]interface{}, len(vs))
			for i, v := range vs {
				l[i] = v
			}
			parsedQuery[k] = l
		}
	}
	input["parsed_path"] = parsedPath
	input["parsed_query"] = parsedQuery
	input["parsed_body"] = nil
	input["truncated_body"] = false
	input["version"] = map[string]interface{}{"encoding": "protojson", "ext_authz": "v3"}
	return input, nil
}

func (s *server) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	m := metrics.New()
	m.Timer(metrics.ServerHandler).Start()
	input, err := requestToInput(req)
	if err != nil {
		return deny(500, "input"), nil
	}
	value, err := ast.InterfaceToValue(input)
	if err != nil {
		return deny(500, "input"), nil
	}
	txn, err := s.store.NewTransaction(ctx)
	if err != nil {
		return deny(500, "txn"), nil
	}
	defer s.store.Abort(ctx, txn)
	rs, err := s.query.Eval(ctx, rego.EvalParsedInput(value), rego.EvalTransaction(txn), rego.EvalMetrics(m))
	m.Timer(metrics.ServerHandler).Stop()
	if err != nil || len(rs) == 0 || len(rs[0].Expressions) == 0 {
		return deny(403, "undefined"), nil
	}
	switch v := rs[0].Expressions[0].Value.(type) {
	case bool:
		if v {
			return allow(nil), nil
		}
		return deny(403, "denied"), nil
	case map[string]interface{}:
		if a, _ := v["allowed"].(bool); a {
			return allow(v["headers"]), nil
		}
		code := 403
		if n, ok := v["http_status"].(json.Number); ok {
			if i, err := n.Int64(); err == nil {
				code = int(i)
			}
		}
		return deny(code, "denied"), nil
	}
	return deny(403, "undefined"), nil
}

func allow(headers interface{}) *authv3.CheckResponse {
	ok := &authv3.OkHttpResponse{}
	if h, isMap := headers.(map[string]interface{}); isMap {
		for k, v := range h {
			if s, isStr := v.(string); isStr {
				ok.Headers = append(ok.Headers, &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: k, Value: s}})
			}
		}
	}
	return &authv3.CheckResponse{
		Status:       &status.Status{Code: int32(codes.OK)},
		HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: ok},
	}
}

func deny(code int, reason string) *authv3.CheckResponse {
	c := codes.PermissionDenied
	if code == 401 {
		c = codes.Unauthenticated
	}
	return &authv3.CheckResponse{
		Status: &status.Status{Code: int32(c), Message: reason},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status: &typev3.HttpStatus{Code: typev3.StatusCode(code)},
		}},
	}
}

func main() {
	addr := flag.String("addr", "127.0.0.1:9191", "gRPC listen address")
	policy := flag.String("policy", "", "Rego policy file")
	dataFile := flag.String("data", "", "JSON data file (loaded at data root)")
	query := flag.String("query", "data.envoy.authz.allow", "decision query")
	flag.Parse()

	src, err := os.ReadFile(*policy)
	if err != nil {
		log.Fatal(err)
	}
	data := map[string]interface{}{}
	if *dataFile != "" {
		bs, err := os.ReadFile(*dataFile)
		if err != nil {
			log.Fatal(err)
		}
		if err := util.UnmarshalJSON(bs, &data); err != nil {
			log.Fatal(err)
		}
	}
	store := inmem.NewFromObject(data)
	ctx := context.Background()
	pq, err := rego.New(
		rego.Query(*query),
		rego.Module(*policy, string(src)),
		rego.Store(store),
	).PrepareForEval(ctx)
	if err != nil {
		log.Fatal(err)
	}
	lis, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	gs := grpc.NewServer()
	authv3.RegisterAuthorizationServer(gs, &server{store: store, query: pq})
	fmt.Printf("LISTENING %s\n", lis.Addr().String())
	go func() {
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
		<-ch
		gs.Stop()
	}()
	if err := gs.Serve(lis); err != nil {
		log.Fatal(err)
	}
}
