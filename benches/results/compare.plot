contender "1_thread" "2_thread"
"upstream directly (ceiling)" 76538 71729
"nginx, plain reverse proxy" 34481 36385
"HAProxy jwt_verify RS256" 13052 14125
"Pingora passthrough, defaults" 19887 16875
"Portcullis, authentication off" 18440 16615
"Portcullis RS256" 15656 14356
"Portcullis ES256" 14602 15725
