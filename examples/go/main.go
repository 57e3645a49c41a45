// A minimal faceid client in Go: enrols a photo under an identity of a gallery, then identifies
// the same photo and prints the identities it matches.  See README.md for building and running.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	faceidv1 "github.com/faceid/faceid/gen/go/faceid/v1"
)

func main() {
	server := flag.String("server", envOr("FACEID_SERVER", "127.0.0.1:50051"), "faceid server, host:port (or $FACEID_SERVER)")
	apiKey := flag.String("api-key", os.Getenv("FACEID_API_KEY"), "API key, a writer's or admin's (or $FACEID_API_KEY)")
	caFile := flag.String("ca-file", "", "PEM file of the CA that signed the server's certificate (TLS); none: plaintext")
	gallery := flag.String("gallery", "example", "gallery id (it must exist: faceid galleries create ID)")
	identity := flag.String("identity", "example-person", "identity id to enrol the photo under")
	timeout := flag.Duration("timeout", 60*time.Second, "deadline of each call")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: %s [flags] PHOTO\n", os.Args[0])
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	photo, err := os.ReadFile(flag.Arg(0))
	if err != nil {
		fail(err)
	}

	transport := grpc.WithInsecure()
	if *caFile != "" {
		creds, err := credentials.NewClientTLSFromFile(*caFile, "")
		if err != nil {
			fail(err)
		}
		transport = grpc.WithTransportCredentials(creds)
	}
	conn, err := grpc.Dial(*server, transport)
	if err != nil {
		fail(err)
	}
	defer conn.Close()
	client := faceidv1.NewFaceIdClient(conn)
	// Every call carries the key as `authorization: Bearer <key>`.
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+*apiKey)
	parent := "galleries/" + *gallery

	call, cancel := context.WithTimeout(ctx, *timeout)
	enrolled, err := client.Enroll(call, &faceidv1.EnrollRequest{
		Parent:     parent,
		IdentityId: *identity,
		Probe:      &faceidv1.Probe{Kind: &faceidv1.Probe_Photo{Photo: photo}},
	})
	cancel()
	if err != nil {
		fail(err)
	}
	for _, face := range enrolled.Faces {
		fmt.Printf("enrolled %s under %s (already there: %t)\n", face.Name, *identity, face.AlreadyEnrolled)
	}

	call, cancel = context.WithTimeout(ctx, *timeout)
	found, err := client.Identify(call, &faceidv1.IdentifyRequest{
		Parent: parent,
		Probe:  &faceidv1.Probe{Kind: &faceidv1.Probe_Photo{Photo: photo}},
		TopK:   3,
	})
	cancel()
	if err != nil {
		fail(err)
	}
	for i, face := range found.Faces {
		b := face.Box
		fmt.Printf("face %d at (%.0f, %.0f)-(%.0f, %.0f):\n", i, b.GetLeft(), b.GetTop(), b.GetRight(), b.GetBottom())
		for _, m := range face.Matches {
			fmt.Printf("  %s distance %.3f similarity %.3f match %t\n", m.IdentityId, m.Distance, m.Similarity, m.IsMatch)
		}
	}
	if len(found.Faces) > 0 && len(found.Faces[0].Matches) > 0 {
		fmt.Printf("best match: %s\n", found.Faces[0].Matches[0].IdentityId)
	} else {
		fmt.Println("best match: none")
	}
}

func envOr(name, fallback string) string {
	if value := os.Getenv(name); value != "" {
		return value
	}
	return fallback
}

// fail prints a gRPC error as its status code and message (other errors as they are) and exits 1.
func fail(err error) {
	if st, ok := status.FromError(err); ok {
		fmt.Fprintf(os.Stderr, "error: %s (code %d): %s\n", st.Code(), st.Code(), st.Message())
	} else {
		fmt.Fprintf(os.Stderr, "error: %v\n", err)
	}
	os.Exit(1)
}
